"""The serving engine's exchange: buffers sized once, per-step metadata loaded in place, host work
O(split requests), rows mapped on the device.

``ExchangeBuffers`` holds every tensor a layer's exchange touches, for a fixed shape
(``max_local`` home rows, ``capacity`` queries per peer). ``StaticExchange`` owns one such set for
the life of a scheduler, with a view of it per bucket (``wire.capacity_buckets``: the step's
all-to-alls carry the smallest bucket holding its busiest peer pair, not the capacity), and,
once per step, lays a ``RankRoute`` out in it:

- the route's slot containers are device tensors (``Slots``: views of SGLang's ``req_to_token``
  rows, guest slot tensors), joined on the device by one ``torch.cat`` into ``kv_indices``;
  nothing is turned into a Python list;
- the small integer metadata (send rows, item lengths, merge order, part counts, header counts)
  is written into one of two pinned host staging sets (``staging.py``) with work proportional to
  the route's parts, copied to the device in one transfer and expanded there (``cumsum``), so
  no buffer is ever reallocated;
- which batch row is which exchange home row is a device table indexed by the row's key (SGLang's
  ``req_pool_indices``): ``scatter_rows``/``gather_rows`` are fixed-shape device ops, valid inside
  a captured CUDA graph whose replay view has no request ids.

A node-scoped step (``wire.scope_peers``) is loaded with ``peers``, its node's ranks: its
all-to-alls run among them only (``route.check_scope`` refuses an item outside them).

A step whose busiest peer pair exceeds ``capacity`` is cut into rounds (``route.split_rounds``,
the same count on every rank); rounds run eagerly, one metadata load per round per layer
(``run_rounds``), and are counted by the caller. Shapes: ``H`` query heads, ``D`` q/k head dim,
``Dv`` v head dim, ``B = max_local``, ``W`` ranks, ``C = capacity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from sglang_dcp.exchange.buffers import ExchangeBuffers, ExchangeShape
from sglang_dcp.exchange.route import RankRoute, check_scope, split_rounds
from sglang_dcp.exchange.staging import Layout, Round, StagingSet, layout_offsets, pieces_of
from sglang_dcp.exchange.staging import Slots  # noqa: F401  (re-exported: callers' import)
from sglang_dcp.exchange.wire import HDR_COUNT, HDR_TAG, capacity_buckets


class StaticExchange:
    """Static buffers + in-place step loading for one rank. ``num_row_keys``: the key space of
    ``scatter_rows`` (SGLang: the request pool size).

    ``shape.capacity`` is the largest bucket; every bucket of ``wire.capacity_buckets`` shares
    its memory (``select``). Host staging alternates between two sets so that a set is
    rewritten only after the non-blocking copies of the step before last have run (a CUDA event
    per set; on CPU copies are synchronous and no event is needed)."""

    def __init__(self, shape: ExchangeShape, device: torch.device | str, *, num_row_keys: int):
        s = self.shape = shape
        W, B = s.num_ranks, s.max_local
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        full = ExchangeBuffers(shape, self.device)
        # q_in gets a trash row B: rows that are not exchange rows are scattered there
        self.q_ext = torch.zeros(B + 1, s.num_q_heads, s.head_dim, dtype=s.dtype, device=device)
        self.row_slot = torch.full((num_row_keys,), B, dtype=torch.long, device=device)
        _, stage_len = layout_offsets(W, s.capacity, B)
        self._dev = torch.zeros(stage_len, dtype=torch.long, device=device)
        self.layouts: dict[int, Layout] = {}
        for c in capacity_buckets(s.capacity):
            bufs = full if c == s.capacity else ExchangeBuffers(replace(s, capacity=c),
                                                                self.device, base=full)
            off, n_stage = layout_offsets(W, c, B)
            bufs.q_in = self.q_ext[:B]
            # the gathers read their indices straight from the device staging copy (no copy op)
            bufs.send_index = self._dev[off["send"] : off["send"] + W * c]
            bufs.merge_index = self._dev[off["merge"] : off["merge"] + B + W * c]
            self.layouts[c] = Layout(c, bufs, off, n_stage)
        self._slots = [StagingSet(stage_len, num_row_keys, B, self.cuda) for _ in range(2)]
        self._slot = 1  # the set the last load wrote
        self._device_keyed = False  # row_slot maps some key (else it is all B)
        self._trash_end = -1  # seg_indptr[B + 1] as last written (shared by every bucket)
        self.select(s.capacity)
        self.rounds: list[Round] = []
        self.loaded_route: RankRoute | None = None  # the route the buffers hold
        self.peers: tuple[int, ...] | None = None  # the loaded step's scope (None: every rank)
        self.tag = 0
        self.high_water = 0  # largest per-peer query count seen (a capacity sizing aid)

    @property
    def nbytes(self) -> int:
        """Device bytes this exchange holds (every bucket shares the largest's buffers)."""
        full = self.layouts[self.shape.capacity].bufs
        seen = {id(t.untyped_storage()): t.untyped_storage().nbytes()
                for t in (*vars(full).values(), self.q_ext, self.row_slot, self._dev)
                if isinstance(t, torch.Tensor)}  # fmt: skip
        return sum(seen.values())

    def select(self, bucket: int) -> None:
        """Run the next steps at ``bucket`` queries per peer (a graph captures one bucket)."""
        lay = self.layouts.get(bucket)
        if lay is None:
            raise ValueError(f"no exchange bucket {bucket}; buckets: {sorted(self.layouts)}")
        self.layout, self.bufs = lay, lay.bufs

    @property
    def bucket(self) -> int:
        return self.layout.bucket

    def _next_slot(self) -> StagingSet:
        self._slot ^= 1
        slot = self._slots[self._slot]
        if slot.event is not None:  # the copies of the step before last: long done, normally
            slot.event.synchronize()
        return slot

    # -- host side: once per step ---------------------------------------------------------------
    def load(self, route: RankRoute, *, rounds: int, tag: int, row_keys: Sequence[int],
             bucket: int | None = None, peers: Sequence[int] | None = None) -> int:  # fmt: skip
        """Lay ``route`` out for this step; ``row_keys[i]`` is home row i's key (its request pool
        index). ``rounds`` is the global round count (``route.num_rounds`` over the step's
        placements with this capacity); ``bucket`` the step's per-peer bucket, the same on every
        rank (``wire.bucket_for`` of the step's busiest pair; default: the largest); ``peers``
        the step's scope (this rank's node's ranks; ``None``: every rank). Returns ``rounds``;
        round 0 is loaded."""
        s = self.shape
        self.peers = check_scope(route, peers)
        if route.batch_size > s.max_local:
            raise ValueError(
                f"rank {route.rank}: {route.batch_size} split rows > max_local {s.max_local}"
            )
        self.select(s.capacity if bucket is None else bucket)
        self.high_water = max(self.high_water, route.max_send, route.max_recv)
        self.tag = tag
        slot = self._next_slot()
        parts = split_rounds(route, capacity=self.bucket, rounds=rounds)
        self.rounds = [self._stage_round(r, slot.stage if len(parts) == 1 else None)
                       for r in parts]  # fmt: skip
        self._set_rows(slot, row_keys)
        self.loaded_route = route if len(parts) == 1 else None
        self.apply(0)
        return len(parts)

    def _stage_round(self, route: RankRoute, stage: torch.Tensor | None) -> Round:
        """Stage one round into ``stage`` (a pinned set; ``None``: a tensor of its own, for a
        step in rounds, whose rounds are applied layer after layer)."""
        s, lay = self.shape, self.layout
        W, C, B = s.num_ranks, lay.bucket, s.max_local
        o = lay.off
        if stage is None:
            stage = torch.zeros(self._dev.shape[0], dtype=torch.long)
        st = stage.numpy()
        st[: lay.stage_len] = 0
        pieces: list[torch.Tensor] = []
        if route.has_local:
            for i, slots in enumerate(route.local_slots):
                st[o["lens"] + i] = len(slots)
                pieces += pieces_of(slots)
        home_pieces = len(pieces)
        hdr = st[o["hdr"] : o["hdr"] + 4 * W].reshape(2, W, 2)
        for p in range(W):
            rows = route.send[p]
            if rows:
                st[o["send"] + p * C : o["send"] + p * C + len(rows)] = rows
            hdr[0, p, HDR_COUNT] = len(rows)
            items = route.recv[p]
            hdr[1, p, HDR_COUNT] = len(items)
            for j, g in enumerate(items):
                st[o["lens"] + B + p * C + j] = len(g.slots)
                pieces += pieces_of(g.slots)
        hdr[:, :, HDR_TAG] = self.tag
        pos = o["merge"]
        for i, row_parts in enumerate(route.merge):
            for m in row_parts:
                st[pos] = i if m.rank == route.rank else B + m.rank * C + m.index
                pos += 1
            st[o["counts"] + i] = len(row_parts)
        num_kv = int(st[o["lens"] : o["lens"] + B + W * C].sum())
        if num_kv > s.max_kv_slots:
            raise ValueError(f"rank {route.rank}: {num_kv} KV slots > {s.max_kv_slots}")
        return Round(stage, tuple(pieces), num_kv, home_pieces)

    def reload_local(self, route: RankRoute, *, tag: int) -> None:
        """The loaded route again with only its home rows' own slots changed (a decode step
        the header predicted: each split request's home tail one token longer): restage those
        lengths and slot pieces, keep the rest (sends, guest items, merge order, row map, bucket).
        O(home split rows) on the host, plus one copy of the staging words into the other set;
        ``route`` must share the loaded route's structure."""
        prev = self.loaded_route
        if (prev is None or route.recv is not prev.recv or route.send != prev.send
                or route.home_rids != prev.home_rids or route.merge != prev.merge):  # fmt: skip
            raise ValueError(f"rank {route.rank}: reload_local needs the loaded route's structure")
        r, o, W = self.rounds[0], self.layout.off, self.shape.num_ranks
        slot = self._next_slot()
        slot.stage.copy_(r.stage)
        r.stage = slot.stage
        st = r.stage.numpy()
        pieces: list[torch.Tensor] = []
        home_kv = 0
        for i, slots in enumerate(route.local_slots):
            st[o["lens"] + i] = len(slots)
            home_kv += len(slots)
            pieces += pieces_of(slots)
        num_kv = r.num_kv - sum(len(x) for x in prev.local_slots) + home_kv
        if num_kv > self.shape.max_kv_slots:
            raise ValueError(f"rank {route.rank}: {num_kv} KV slots > {self.shape.max_kv_slots}")
        r.pieces = (*pieces, *r.pieces[r.home_pieces :])
        r.home_pieces, r.num_kv = len(pieces), num_kv
        self.tag = tag
        st[o["hdr"] : o["hdr"] + 4 * W].reshape(2, W, 2)[:, :, HDR_TAG] = tag
        self.loaded_route = route
        self.apply(0)

    def _set_rows(self, slot: StagingSet, row_keys: Sequence[int]) -> None:
        """Map ``row_keys`` to home rows in ``slot``'s host table and copy it to the device
        (skipped when both the device table and the new one map nothing, as before staging
        sets: a step with no split rows here costs no copy)."""
        B = self.shape.max_local
        h = slot.rows.numpy()
        if slot.keys:
            h[slot.keys] = B
        keys = [int(k) for k in row_keys]
        if keys:
            h[keys] = range(len(keys))
        if keys or self._device_keyed:
            self.row_slot.copy_(slot.rows, non_blocking=True)
            self._device_keyed = bool(keys)
        slot.keys = keys

    def apply(self, k: int) -> None:
        """Load round ``k``'s metadata into the static buffers (device ops only, in place)."""
        s, lay = self.shape, self.layout
        b, o = lay.bufs, lay.off
        W, B = s.num_ranks, s.max_local
        n = B + W * lay.bucket
        r = self.rounds[k]
        dev = self._dev
        # send_index and merge_index are views of it
        dev[: lay.stage_len].copy_(r.stage[: lay.stage_len], non_blocking=True)
        torch.cumsum(dev[o["lens"] : o["lens"] + n], 0, dtype=torch.int32, out=b.kv_indptr[1:])
        torch.cumsum(dev[o["counts"] : o["counts"] + B], 0, out=b.seg_indptr[1 : B + 1])
        if self._trash_end != n:  # the trash segment ends with the bucket's items
            b.seg_indptr[B + 1 :].fill_(n)
            self._trash_end = n
        hdr = dev[o["hdr"] : o["hdr"] + 4 * W].view(2, W, 2)
        b.q_send_hdr[:, :2].copy_(hdr[0])  # (HDR_COUNT, HDR_TAG) are fields 0, 1
        b.r_send_hdr[:, :2].copy_(hdr[1])
        if r.num_kv:
            torch.cat(r.pieces, out=b.kv_indices[: r.num_kv])
        if self.cuda:  # what the next rewrite of this staging set waits for
            slot = self._slots[self._slot]
            if slot.event is None:
                slot.event = torch.cuda.Event()
            slot.event.record()

    def run(
        self, comm, k_buffer, v_buffer, *, sm_scale: float, attention, merge, k_scale=None,
        v_scale=None,
    ) -> torch.Tensor:  # fmt: skip
        """Every round of this step's exchange for one layer; returns the merged ``[B, H, Dv]``
        of the home rows. One round: graph-safe, in place. Several: eager, round by round, LSE
        merged (the merge is associative, so rounds merge like shards)."""
        from sglang_dcp.exchange.exchange import exchange_attention, merge_rounds

        kw = dict(sm_scale=sm_scale, attention=attention, merge=merge, k_scale=k_scale,
                  v_scale=v_scale, peers=self.peers)  # fmt: skip
        if len(self.rounds) <= 1:
            exchange_attention(self.bufs, comm, k_buffer, v_buffer, **kw)
            return self.bufs.out
        outs = []
        for k in range(len(self.rounds)):
            self.apply(k)
            exchange_attention(self.bufs, comm, k_buffer, v_buffer, **kw)
            outs.append((self.bufs.out.clone(), self.bufs.out_lse.clone()))
        return merge_rounds(outs, merge)[0]

    def clear(self, bucket: int | None = None, peers: Sequence[int] | None = None) -> None:
        """An empty route (no rows, no items) at ``bucket`` (default: the selected one) and scope
        ``peers``: what a capture or a step with nothing here runs."""
        s = self.shape
        empty = RankRoute(
            rank=0, num_ranks=s.num_ranks, home_rids=(), local_slots=(),
            send=((),) * s.num_ranks, recv=((),) * s.num_ranks, merge=(),
        )  # fmt: skip
        self.load(empty, rounds=1, tag=self.tag, row_keys=(),
                  bucket=self.bucket if bucket is None else bucket, peers=peers)  # fmt: skip

    # -- device side: inside the forward (graph-safe) -------------------------------------------
    def row_index(self, keys: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``[n]`` exchange row of each batch row (``B`` = not an exchange row)."""
        x = self.row_slot.index_select(0, keys.to(torch.long))
        if valid is not None:
            x = torch.where(valid, x, torch.full_like(x, self.shape.max_local))
        return x

    def scatter_rows(self, q: torch.Tensor, x: torch.Tensor) -> None:
        """Exchange rows' queries ``q [n, H, D]`` into ``q_in`` (the rest into the trash row)."""
        self.q_ext.index_copy_(0, x, q.to(self.q_ext.dtype))

    def gather_rows(self, out: torch.Tensor, x: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
        """``out [n, H * Dv]`` with the exchange rows replaced by ``merged [B, H, Dv]``."""
        B = self.shape.max_local
        picked = merged.reshape(B, -1).index_select(0, x.clamp(max=B - 1)).to(out.dtype)
        return torch.where((x < B).unsqueeze(1), picked, out)
