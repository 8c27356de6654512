"""The serving engine's exchange: buffers sized once, per-step metadata loaded in place, host work
O(split requests), rows mapped on the device.

``ExchangeBuffers`` holds every tensor a layer's exchange touches, for a fixed shape
(``max_local`` home rows, ``capacity`` queries per peer). ``StaticExchange`` owns one such set for
the life of a scheduler and, once per step, lays a ``RankRoute`` out in it:

- the route's slot containers are device tensors (``Slots``: views of SGLang's ``req_to_token``
  rows, guest slot tensors), joined on the device by one ``torch.cat`` into ``kv_indices``;
  nothing is turned into a Python list;
- the small integer metadata (send rows, item lengths, merge order, part counts, header counts)
  is written into one host staging tensor with work proportional to the route's parts, copied to
  the device in one transfer and expanded there (``cumsum``), so no buffer is ever reallocated;
- which batch row is which exchange home row is a device table indexed by the row's key (SGLang's
  ``req_pool_indices``): ``scatter_rows``/``gather_rows`` are fixed-shape device ops, valid inside
  a captured CUDA graph whose replay view has no request ids.

A step whose busiest peer pair exceeds ``capacity`` is cut into rounds (``route.split_rounds``,
the same count on every rank); rounds run eagerly, one metadata load per round per layer
(``run_rounds``), and are counted by the caller. Shapes: ``H`` query heads, ``D`` q/k head dim,
``Dv`` v head dim, ``B = max_local``, ``W`` ranks, ``C = capacity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sglang_dcp.exchange.buffers import ExchangeBuffers, ExchangeShape
from sglang_dcp.exchange.route import RankRoute, split_rounds
from sglang_dcp.exchange.wire import HDR_COUNT, HDR_TAG


class Slots:
    """One item's KV slots on this rank as device tensor pieces in token order (views, never
    copied on the host); ``len()`` is the token count."""

    __slots__ = ("parts", "n")

    def __init__(self, parts: Sequence[torch.Tensor], n: int | None = None) -> None:
        self.parts = tuple(parts)  # a zero-length piece is harmless to torch.cat
        self.n = sum(p.numel() for p in self.parts) if n is None else n

    def __len__(self) -> int:
        return self.n

    def head(self, n: int) -> "Slots":
        """The first ``n`` slots, as views (extend mode: a chunk row's causal slots)."""
        parts, left = [], n
        for p in self.parts:
            if left <= 0:
                break
            parts.append(p[:left])
            left -= min(left, p.numel())
        return Slots(parts, min(n, self.n))


def _pieces(slots) -> tuple[torch.Tensor, ...]:
    if isinstance(slots, Slots):
        return slots.parts
    if isinstance(slots, torch.Tensor):
        return (slots,) if slots.numel() else ()
    return (torch.tensor(list(slots), dtype=torch.long),) if len(slots) else ()


@dataclass(slots=True)
class _Round:
    """One round's metadata: the host staging copy and its KV slot pieces."""

    stage: torch.Tensor
    pieces: tuple[torch.Tensor, ...]
    num_kv: int
    home_pieces: int = 0  # pieces[:home_pieces] are the home rows' (the rest: guest items)


class StaticExchange:
    """Static buffers + in-place step loading for one rank. ``num_row_keys``: the key space of
    ``scatter_rows`` (SGLang: the request pool size)."""

    def __init__(self, shape: ExchangeShape, device: torch.device | str, *, num_row_keys: int):
        s = self.shape = shape
        W, C, B = s.num_ranks, s.capacity, s.max_local
        self.device = torch.device(device)
        self.bufs = ExchangeBuffers(shape, self.device)
        # q_in gets a trash row B: rows that are not exchange rows are scattered there
        self.q_ext = torch.zeros(B + 1, s.num_q_heads, s.head_dim, dtype=s.dtype, device=device)
        self.bufs.q_in = self.q_ext[:B]
        pin = self.device.type == "cuda"
        self.row_slot = torch.full((num_row_keys,), B, dtype=torch.long, device=device)
        self._row_host = torch.full((num_row_keys,), B, dtype=torch.long, pin_memory=pin)
        self._row_keys: list[int] = []
        n = s.num_items
        self._off = {"send": 0, "lens": W * C, "merge": W * C + n, "counts": W * C + 2 * n,
                     "sc": W * C + 2 * n + B, "rc": W * C + 2 * n + B + W}  # fmt: skip
        self._stage_len = W * C + 2 * n + B + 2 * W
        self._stage = torch.zeros(self._stage_len, dtype=torch.long, pin_memory=pin)
        self._dev = torch.zeros(self._stage_len, dtype=torch.long, device=device)
        # the gathers read their indices straight from the device staging copy (no copy op)
        self.bufs.send_index = self._dev[self._off["send"] : self._off["send"] + W * C]
        self.bufs.merge_index = self._dev[self._off["merge"] : self._off["merge"] + n]
        self.bufs.seg_indptr[B + 1] = n  # the trash segment's end never changes
        # header (count, tag) pairs of both messages, staged as int32: [2, W, 2]
        self._hdr = torch.zeros(2, W, 2, dtype=torch.int32, pin_memory=pin)
        self._hdr_dev = torch.zeros(2, W, 2, dtype=torch.int32, device=device)
        self.rounds: list[_Round] = []
        self.loaded_route: RankRoute | None = None  # the route the buffers hold
        self.tag = 0
        self.high_water = 0  # largest per-peer query count seen (a capacity sizing aid)

    # -- host side: once per step ---------------------------------------------------------------
    def load(self, route: RankRoute, *, rounds: int, tag: int, row_keys: Sequence[int]) -> int:
        """Lay ``route`` out for this step; ``row_keys[i]`` is home row i's key (its request pool
        index). ``rounds`` is the global round count (``route.num_rounds`` over the step's
        placements with this capacity). Returns ``rounds``; round 0 is loaded."""
        s = self.shape
        if route.batch_size > s.max_local:
            raise ValueError(
                f"rank {route.rank}: {route.batch_size} split rows > max_local {s.max_local}"
            )
        self.high_water = max(self.high_water, route.max_send, route.max_recv)
        self.tag = tag
        parts = split_rounds(route, capacity=s.capacity, rounds=rounds)
        self.rounds = [self._stage_round(r, keep=len(parts) > 1) for r in parts]
        self._set_rows(row_keys)
        self.loaded_route = route if len(parts) == 1 else None
        self.apply(0)
        return len(parts)

    def _stage_round(self, route: RankRoute, *, keep: bool) -> _Round:
        s = self.shape
        W, C, B = s.num_ranks, s.capacity, s.max_local
        o = self._off
        st = self._stage.numpy()
        st[:] = 0
        pieces: list[torch.Tensor] = []
        if route.has_local:
            for i, slots in enumerate(route.local_slots):
                st[o["lens"] + i] = len(slots)
                pieces += _pieces(slots)
        home_pieces = len(pieces)
        for p in range(W):
            rows = route.send[p]
            if rows:
                st[o["send"] + p * C : o["send"] + p * C + len(rows)] = rows
            st[o["sc"] + p] = len(rows)
            items = route.recv[p]
            st[o["rc"] + p] = len(items)
            for j, g in enumerate(items):
                st[o["lens"] + B + p * C + j] = len(g.slots)
                pieces += _pieces(g.slots)
        pos = o["merge"]
        for i, row_parts in enumerate(route.merge):
            for m in row_parts:
                st[pos] = i if m.rank == route.rank else B + m.rank * C + m.index
                pos += 1
            st[o["counts"] + i] = len(row_parts)
        num_kv = int(st[o["lens"] : o["lens"] + s.num_items].sum())
        if num_kv > s.max_kv_slots:
            raise ValueError(f"rank {route.rank}: {num_kv} KV slots > {s.max_kv_slots}")
        stage = self._stage.clone() if keep else self._stage
        return _Round(stage, tuple(pieces), num_kv, home_pieces)

    def reload_local(self, route: RankRoute, *, tag: int) -> None:
        """The loaded route again with only its home rows' own slots changed (a decode step
        the header predicted: each split request's home tail one token longer): restage those
        lengths and slot pieces, keep the rest (sends, guest items, merge order, row map).
        O(home split rows) on the host; ``route`` must share the loaded route's structure."""
        prev = self.loaded_route
        if (prev is None or route.recv is not prev.recv or route.send != prev.send
                or route.home_rids != prev.home_rids or route.merge != prev.merge):  # fmt: skip
            raise ValueError(f"rank {route.rank}: reload_local needs the loaded route's structure")
        r, o = self.rounds[0], self._off
        st = r.stage.numpy()
        pieces: list[torch.Tensor] = []
        home_kv = 0
        for i, slots in enumerate(route.local_slots):
            st[o["lens"] + i] = len(slots)
            home_kv += len(slots)
            pieces += _pieces(slots)
        num_kv = r.num_kv - sum(len(x) for x in prev.local_slots) + home_kv
        if num_kv > self.shape.max_kv_slots:
            raise ValueError(f"rank {route.rank}: {num_kv} KV slots > {self.shape.max_kv_slots}")
        r.pieces = (*pieces, *r.pieces[r.home_pieces :])
        r.home_pieces, r.num_kv = len(pieces), num_kv
        self.tag = tag
        self.loaded_route = route
        self.apply(0)

    def _set_rows(self, row_keys: Sequence[int]) -> None:
        B = self.shape.max_local
        h = self._row_host.numpy()
        if self._row_keys:
            h[self._row_keys] = B
        keys = [int(k) for k in row_keys]
        if keys:
            h[keys] = range(len(keys))
        if keys or self._row_keys:
            self.row_slot.copy_(self._row_host, non_blocking=True)
        self._row_keys = keys

    def apply(self, k: int) -> None:
        """Load round ``k``'s metadata into the static buffers (device ops only, in place)."""
        s, b, o = self.shape, self.bufs, self._off
        W, C, B, n = s.num_ranks, s.capacity, s.max_local, s.num_items
        r = self.rounds[k]
        dev = self._dev
        dev.copy_(r.stage, non_blocking=True)  # send_index and merge_index are views of it
        torch.cumsum(dev[o["lens"] : o["lens"] + n], 0, dtype=torch.int32, out=b.kv_indptr[1:])
        torch.cumsum(dev[o["counts"] : o["counts"] + B], 0, out=b.seg_indptr[1 : B + 1])
        h = self._hdr.numpy()
        st = r.stage.numpy()
        h[0, :, HDR_COUNT] = st[o["sc"] : o["sc"] + W]
        h[1, :, HDR_COUNT] = st[o["rc"] : o["rc"] + W]
        h[:, :, HDR_TAG] = self.tag
        self._hdr_dev.copy_(self._hdr, non_blocking=True)
        b.q_send_hdr[:, :2].copy_(self._hdr_dev[0])  # (HDR_COUNT, HDR_TAG) are fields 0, 1
        b.r_send_hdr[:, :2].copy_(self._hdr_dev[1])
        if r.num_kv:
            torch.cat(r.pieces, out=b.kv_indices[: r.num_kv])

    def run(
        self, comm, k_buffer, v_buffer, *, sm_scale: float, attention, merge, k_scale=None,
        v_scale=None,
    ) -> torch.Tensor:  # fmt: skip
        """Every round of this step's exchange for one layer; returns the merged ``[B, H, Dv]``
        of the home rows. One round: graph-safe, in place. Several: eager, round by round, LSE
        merged (the merge is associative, so rounds merge like shards)."""
        from sglang_dcp.exchange.exchange import exchange_attention, merge_rounds

        kw = dict(sm_scale=sm_scale, attention=attention, merge=merge, k_scale=k_scale,
                  v_scale=v_scale)  # fmt: skip
        if len(self.rounds) <= 1:
            exchange_attention(self.bufs, comm, k_buffer, v_buffer, **kw)
            return self.bufs.out
        outs = []
        for k in range(len(self.rounds)):
            self.apply(k)
            exchange_attention(self.bufs, comm, k_buffer, v_buffer, **kw)
            outs.append((self.bufs.out.clone(), self.bufs.out_lse.clone()))
        return merge_rounds(outs, merge)[0]

    def clear(self) -> None:
        """An empty route (no rows, no items): what a capture or a step with nothing here runs."""
        s = self.shape
        empty = RankRoute(
            rank=0, num_ranks=s.num_ranks, home_rids=(), local_slots=(),
            send=((),) * s.num_ranks, recv=((),) * s.num_ranks, merge=(),
        )  # fmt: skip
        self.load(empty, rounds=1, tag=self.tag, row_keys=())

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
