"""The extend-mode exchange: a step's prefill chunks as row tiles (``extend_tiles.TileRoute``) on
buffers reserved once, sized by the chunk size and the per-peer round capacity.

Per layer, on every rank (eager: extend steps never run in a CUDA graph)::

    home part:  prefix_attention(q_home, home tiles: causal)          -> (o_run, lse_run)
    round k:    q_home --gather(send_index[k])--> q_send --all_to_all--> q_recv
                prefix_attention(q_recv, guest tiles of round k)       -> (o_send, lse_send)
                (o_send, lse_send) --all_to_all--> (o_recv, lse_recv)   (one message: each
                row is o then lse, so the kernel writes both in place)
                per peer p: (o_run, lse_run)[send_index[k, p]] merged with its returned row

A partial comes back at the position its query was sent from, so ``send_index`` is also the merge
map; padding positions point at the trash row ``max_rows``. Shapes: ``H`` query heads, ``D``
q/k head dim, ``Dv`` v head dim, ``W`` ranks, ``C`` rows per peer per round, ``N = max_rows``.
Host work per step O(chunks x ranks x rounds) torch calls plus one copy per metadata array;
nothing is read back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dcp.exchange.extend_tiles import TileRoute, guest_tiles, home_tiles, round_span
from sglang_dcp.exchange.staging import pieces_of

ROUND_ROWS = 1024  # default rows per peer per round: bounds the wire buffers at long chunks
WIRE_BYTES = 1 << 30  # and the four wire buffers together stay under this (wide MLA rows)


@dataclass(frozen=True, slots=True)
class TileShape:
    num_ranks: int
    max_rows: int  # home rows per step: the per-rank chunk size (``--chunked-prefill-size``)
    capacity: int  # rows per peer per round
    num_q_heads: int
    head_dim: int
    v_head_dim: int
    max_kv_slots: int  # slot ids of one step's spans: the pool size bounds them
    tile_rows: int
    dtype: torch.dtype = torch.float32

    @property
    def o_bytes(self) -> int:
        """Bytes of one row's ``o`` in a returned message, padded so its lse is 4-aligned."""
        es = torch.empty((), dtype=self.dtype).element_size()
        return -(-self.num_q_heads * self.v_head_dim * es // 4) * 4

    @property
    def row_bytes(self) -> int:
        return self.o_bytes + 4 * self.num_q_heads

    @property
    def max_rounds(self) -> int:
        return max(1, -(-self.max_rows // self.capacity))

    def nbytes_wire(self) -> int:
        """Bytes of the four wire buffers (q out / in, (o, lse) out / in)."""
        es = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_ranks * self.capacity * (
            self.num_q_heads * self.head_dim * es + self.row_bytes)

    def nbytes(self) -> int:
        """Device bytes the buffers take (reported when they are reserved)."""
        W, C, N, H = self.num_ranks, self.capacity, self.max_rows, self.num_q_heads
        es = torch.empty((), dtype=self.dtype).element_size()
        rows = (N + 1) * H * (self.head_dim + self.v_head_dim) * es + (N + 1) * H * 4
        wire = self.nbytes_wire()
        meta = 8 * (self.max_rounds * W * C + self.max_kv_slots)
        meta += 4 * 5 * (N + self.max_rounds * W * C)
        return rows + wire + meta


class TileExchange:
    """Buffers + per-step loading for one rank; ``load`` once per step, ``run`` per layer."""

    def __init__(self, shape: TileShape, device: torch.device | str) -> None:
        s = self.shape = shape
        W, C, N, H, R = s.num_ranks, s.capacity, s.max_rows, s.num_q_heads, s.max_rounds
        self.device = dev = torch.device(device)
        kw = dict(device=dev)
        self.q_home = torch.zeros(N + 1, H, s.head_dim, dtype=s.dtype, **kw)  # row N: trash
        self.o_run = torch.zeros(N + 1, H, s.v_head_dim, dtype=s.dtype, **kw)
        self.lse_run = torch.zeros(N + 1, H, dtype=torch.float32, **kw)
        self._q_send = torch.zeros(W * C * H * s.head_dim, dtype=s.dtype, **kw)
        self._q_recv = torch.zeros_like(self._q_send)
        self._r_send = torch.zeros(W * C * s.row_bytes, dtype=torch.uint8, **kw)
        self._r_recv = torch.zeros_like(self._r_send)
        self.send_index = torch.full((R, W * C), N, dtype=torch.long, **kw)
        self.kv_indices = torch.zeros(max(1, s.max_kv_slots), dtype=torch.long, **kw)
        self.home_tiles = torch.zeros(N, 5, dtype=torch.int32, **kw)
        self.guest_tiles = torch.zeros(R, W * C, 5, dtype=torch.int32, **kw)
        pin = dev.type == "cuda"
        self._send_host = torch.full((R, W * C), N, dtype=torch.long, pin_memory=pin)
        self._home_host = torch.zeros(N, 5, dtype=torch.int32, pin_memory=pin)
        self._guest_host = torch.zeros(R, W * C, 5, dtype=torch.int32, pin_memory=pin)
        self.route: TileRoute | None = None
        self.cap = C  # this step's rows per peer per round
        self.rounds = 0
        self.num_home_tiles = 0
        self.num_guest_tiles: list[int] = []
        self.merge_peers: list[list[int]] = []  # per round: peers that return rows to merge

    # -- host side: once per step -----------------------------------------------------------
    def load(self, route: TileRoute, *, home_slots, guest_slots) -> None:
        """Lay ``route`` out. ``home_slots[i]``: home chunk i's span (its ``held`` prefix slots then
        its ``rows`` chunk slots, token order); ``guest_slots[rid]``: this rank's ``held`` slots
        of a guest chunk's request (device tensors or ``static.Slots``)."""
        s = self.shape
        W, N, T = s.num_ranks, s.max_rows, s.tile_rows
        if route.num_rows > N or route.max_stream > N:
            raise ValueError(f"rank {route.rank}: {max(route.num_rows, route.max_stream)} chunk "
                             f"rows > the {N} reserved (the per-rank chunk size)")  # fmt: skip
        if route.tile_rows != T:
            raise ValueError(f"route tiles of {route.tile_rows} rows, buffers for {T}")
        C = self.cap = max(1, min(s.capacity, route.max_stream))
        R = self.rounds = route.num_rounds(C)
        pieces: list[torch.Tensor] = []
        pos = 0
        ht = self._home_host.numpy()
        nh = 0
        for c, slots in zip(route.home, home_slots, strict=True):
            if len(slots) != c.held + c.rows:
                raise ValueError(f"home span of {c.rid!r}: {len(slots)} slots, expected "
                                 f"{c.held} + {c.rows}")  # fmt: skip
            for first, rows, seen0 in home_tiles(c, T):
                ht[nh] = (first, rows, pos, c.held + c.rows, seen0)
                nh += 1
            pieces += pieces_of(slots)
            pos += len(slots)
        send = self._send_host.numpy()
        send[:, : W * C] = N
        for c in route.home:
            for p, off in c.sent:
                for k in range(R):
                    i0, i1 = round_span(off, c.rows, k, C)
                    if i0 < i1:
                        at = p * C + off + i0 - k * C
                        send[k, at : at + i1 - i0] = range(c.first + i0, c.first + i1)
        gt = self._guest_host.numpy()
        self.num_guest_tiles = [0] * R
        for p, items in enumerate(route.recv):
            for g in items:
                slots = guest_slots[g.rid]
                if len(slots) != g.held:
                    raise ValueError(f"guest span of {g.rid!r}: {len(slots)} slots, expected "
                                     f"{g.held}")  # fmt: skip
                for k in range(R):
                    for row, rows in guest_tiles(g, k, C, T):
                        gt[k, self.num_guest_tiles[k]] = (p * C + row, rows, pos, g.held, g.held)
                        self.num_guest_tiles[k] += 1
                pieces += pieces_of(slots)
                pos += g.held
        if pos > s.max_kv_slots:
            raise ValueError(f"rank {route.rank}: {pos} KV slots > {s.max_kv_slots}")
        self.num_home_tiles = nh
        self.merge_peers = [[p for p in range(W) if route.send_rows[p] > k * C] for k in range(R)]
        self.home_tiles[:nh].copy_(self._home_host[:nh], non_blocking=True)
        self.send_index[:R].copy_(self._send_host[:R], non_blocking=True)
        self.guest_tiles.copy_(self._guest_host, non_blocking=True)
        if pos:
            torch.cat(pieces, out=self.kv_indices[:pos])
        self.route = route

    # -- device side: inside the forward ------------------------------------------------------
    def scatter_rows(self, q: torch.Tensor, x: torch.Tensor) -> None:
        """Home rows' queries ``q [n, H, D]`` by ``x [n]`` (``max_rows``: not a chunk row)."""
        self.q_home.index_copy_(0, x, q.to(self.q_home.dtype))

    def gather_rows(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out [n, H * Dv]`` with the chunk rows replaced by the merged attention."""
        N = self.shape.max_rows
        picked = self.o_run.view(N + 1, -1).index_select(0, x).to(out.dtype)
        return torch.where((x < N).unsqueeze(1), picked, out)

    def _views(self):
        s, W, C, H = self.shape, self.shape.num_ranks, self.cap, self.shape.num_q_heads
        n, ob = W * C, s.o_bytes
        out = [self._q_send[: n * H * s.head_dim].view(n, H, s.head_dim),
               self._q_recv[: n * H * s.head_dim].view(n, H, s.head_dim)]
        for raw in (self._r_send, self._r_recv):
            rows = raw[: n * s.row_bytes].view(n, s.row_bytes)
            o = rows[:, : H * s.v_head_dim * torch.empty((), dtype=s.dtype).element_size()]
            out += [rows, o.view(s.dtype).view(n, H, s.v_head_dim),
                    rows[:, ob:].view(torch.float32)]
        return out

    def run(self, comm, k_buffer, v_buffer, *, sm_scale: float, attention, k_scale=None,
            v_scale=None) -> torch.Tensor:  # fmt: skip
        """One layer: every round of the step; returns ``o_run [max_rows + 1, H, Dv]`` (the
        merged attention of home row i at i). ``attention``: ``kernels.prefix_attention``."""
        T, W, C = self.shape.tile_rows, self.shape.num_ranks, self.cap
        kw = dict(max_rows=T, k_scale=k_scale, v_scale=v_scale)
        o_run, lse_run = self.o_run, self.lse_run
        if self.num_home_tiles:
            attention(self.q_home, k_buffer, v_buffer, self.home_tiles[: self.num_home_tiles],
                      self.kv_indices, sm_scale, out=(o_run, lse_run), **kw)  # fmt: skip
        q_send, q_recv, r_send, o_send, l_send, r_recv, o_recv, l_recv = self._views()
        for k in range(self.rounds):
            idx = self.send_index[k, : W * C]
            torch.index_select(self.q_home, 0, idx, out=q_send)
            comm.all_to_all_single(q_recv, q_send)
            n = self.num_guest_tiles[k]
            if n:
                attention(q_recv, k_buffer, v_buffer, self.guest_tiles[k, :n], self.kv_indices,
                          sm_scale, out=(o_send, l_send), **kw)  # fmt: skip
            comm.all_to_all_single(r_recv, r_send)
            for p in self.merge_peers[k]:
                sl = slice(p * C, (p + 1) * C)
                merge_into(o_run, lse_run, idx[sl], o_recv[sl], l_recv[sl])
        return o_run


def merge_into(o_run, lse_run, idx, o_new, lse_new) -> None:
    """``(o_run, lse_run)[idx] <- merge((o_run, lse_run)[idx], (o_new, lse_new))`` by LSE
    (natural log; -inf: empty). ``idx [n]`` distinct except for the trash row.
    o_run: [N + 1, H, Dv]; lse_run: [N + 1, H] fp32; o_new: [n, H, Dv]; lse_new: [n, H]."""
    a_l = lse_run.index_select(0, idx)
    m = torch.maximum(a_l, lse_new)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    wa = torch.exp(a_l - m)  # exp(-inf) = 0: an empty side adds nothing
    wb = torch.exp(lse_new - m)
    d = wa + wb
    live = d > 0
    d_safe = torch.where(live, d, torch.ones_like(d))
    # an empty side's o is never read into the sum (it may be padding garbage)
    a = torch.where((wa > 0)[..., None], wa[..., None] * o_run.index_select(0, idx).float(), 0.0)
    b = torch.where((wb > 0)[..., None], wb[..., None] * o_new.float(), 0.0)
    o = torch.where(live[..., None], (a + b) / d_safe[..., None], 0.0)
    lse = torch.where(live, m + torch.log(d_safe), float("-inf"))
    o_run.index_copy_(0, idx, o.to(o_run.dtype))
    lse_run.index_copy_(0, idx, lse)
