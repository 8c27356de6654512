"""Static exchange buffers with a fixed per-peer capacity, and the per-step metadata they take.

Each rank sends every peer exactly ``capacity`` rows per round, whatever the route, so the
``all_to_all_single`` splits never change and a captured CUDA graph stays valid on replay. The
real row count travels in a 16-byte header (``wire.py`` §1) in front of each peer's rows. A message is raw bytes
(``uint8``) so that the header, the query rows and, on the way back, the ``o`` and ``lse`` rows go
in one collective each way::

    q message, per peer:    | hdr: count, tag (int32 x4) | q rows [capacity, num_heads, head_dim] |
    out message, per peer:  | hdr | o rows [capacity, num_heads, v_head_dim] |
                            | lse rows [capacity, num_heads] fp32 |

Items (the attention launch) and merge parts use one fixed layout per bucket::

    items:  [ home rows (max_local) | peer 0 (capacity) | ... | peer W-1 (capacity) ]
    parts:  the same positions: local outputs, then what each peer returned
    merge segments: one per home row (padded rows: empty), then one trash segment taking the
    unused positions so the part count stays fixed.

``StepMeta`` is built on the host once per step (per round) and copied in place by
``ExchangeBuffers.copy_from``; nothing a graph reads is ever reallocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dcp.exchange.route import RankRoute
from sglang_dcp.exchange.wire import HDR_COUNT, HDR_TAG, HEADER_BYTES


def _round16(n: int) -> int:
    return -(-n // 16) * 16


@dataclass(frozen=True, slots=True)
class ExchangeShape:
    num_ranks: int
    max_local: int  # home rows per step (bucket)
    capacity: int  # query rows per peer per round (bucket)
    num_q_heads: int
    head_dim: int
    v_head_dim: int
    max_kv_slots: int  # KV slots one round can read: the pool size bounds it
    dtype: torch.dtype = torch.float32

    @property
    def num_items(self) -> int:
        return self.max_local + self.num_ranks * self.capacity

    @property
    def esize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def q_bytes(self) -> int:
        return self.capacity * self.num_q_heads * self.head_dim * self.esize

    @property
    def o_bytes(self) -> int:
        return self.capacity * self.num_q_heads * self.v_head_dim * self.esize

    @property
    def lse_bytes(self) -> int:
        return self.capacity * self.num_q_heads * 4

    @property
    def q_msg_bytes(self) -> int:
        return HEADER_BYTES + _round16(self.q_bytes)

    @property
    def out_msg_bytes(self) -> int:
        return HEADER_BYTES + _round16(self.o_bytes) + _round16(self.lse_bytes)


class CapacityError(ValueError):
    """A route that does not fit a bucket; callers split it into rounds before running."""


@dataclass(frozen=True, slots=True)
class StepMeta:
    """Host-side metadata of one round (CPU tensors)."""

    batch_size: int
    send_index: torch.Tensor  # [num_ranks * capacity] int64: home row per sent query (pad: 0)
    send_count: torch.Tensor  # [num_ranks] int32
    recv_count: torch.Tensor  # [num_ranks] int32: guest items expected from each peer
    kv_indptr: torch.Tensor  # [num_items + 1] int32
    kv_indices: torch.Tensor  # [num_kv] int64: pool slots, item after item
    merge_index: torch.Tensor  # [num_items] int64: part position per merge slot
    seg_indptr: torch.Tensor  # [max_local + 2] int64
    tag: int = 0


def build_step_meta(route: RankRoute, shape: ExchangeShape, *, tag: int = 0) -> StepMeta:
    """Lay a route round out in a bucket's fixed positions; ``CapacityError`` if it cannot fit."""
    W, C, B = shape.num_ranks, shape.capacity, shape.max_local
    if route.num_ranks != W:
        raise CapacityError(f"route for {route.num_ranks} ranks, buffers for {W}")
    if route.batch_size > B:
        raise CapacityError(f"rank {route.rank}: batch {route.batch_size} > max_local {B}")
    if max(route.max_send, route.max_recv) > C:
        raise CapacityError(
            f"rank {route.rank}: {max(route.max_send, route.max_recv)} queries for one peer "
            f"> capacity {C}; split the step into rounds"
        )
    if route.num_kv_slots > shape.max_kv_slots:
        raise CapacityError(
            f"rank {route.rank}: {route.num_kv_slots} KV slots > {shape.max_kv_slots}"
        )

    send_index = torch.zeros(W * C, dtype=torch.long)
    for p, rows in enumerate(route.send):
        send_index[p * C : p * C + len(rows)] = torch.tensor(rows, dtype=torch.long)

    lens = [0] * shape.num_items
    chunks: list[tuple[int, ...]] = []
    if route.has_local:
        for i, s in enumerate(route.local_slots):
            lens[i] = len(s)
            chunks.append(s)
    for p, items in enumerate(route.recv):
        for j, g in enumerate(items):
            lens[B + p * C + j] = len(g.slots)
            chunks.append(g.slots)
    indptr = [0]
    for n in lens:
        indptr.append(indptr[-1] + n)
    flat = [s for c in chunks for s in c]

    merge: list[int] = []
    seg = [0]
    for i in range(B):
        if i < route.batch_size:
            for m in route.merge[i]:
                merge.append(i if m.rank == route.rank else B + m.rank * C + m.index)
        seg.append(len(merge))
    merge.extend([0] * (shape.num_items - len(merge)))  # trash segment
    seg.append(shape.num_items)

    return StepMeta(
        batch_size=route.batch_size,
        send_index=send_index,
        send_count=torch.tensor([len(s) for s in route.send], dtype=torch.int32),
        recv_count=torch.tensor([len(r) for r in route.recv], dtype=torch.int32),
        kv_indptr=torch.tensor(indptr, dtype=torch.int32),
        kv_indices=torch.tensor(flat, dtype=torch.long),
        merge_index=torch.tensor(merge, dtype=torch.long),
        seg_indptr=torch.tensor(seg, dtype=torch.long),
        tag=tag,
    )


def _front(t: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The first ``prod(size)`` elements of contiguous ``t`` as a ``size`` tensor (a view)."""
    n = 1
    for d in size:
        n *= d
    if n > t.numel():
        raise ValueError(f"a bucket view of {n} elements in a buffer of {t.numel()}")
    return t.view(-1)[:n].view(size)


def _view(buf: torch.Tensor, offset: int, nbytes: int, dtype: torch.dtype, *shape: int):
    return buf[:, offset : offset + nbytes].view(dtype).view(buf.shape[0], *shape)


class ExchangeBuffers:
    """Every tensor one bucket's exchange touches, allocated once.

    ``base``: the buffers of the same exchange at a larger capacity; this bucket's tensors are
    then views of the front of ``base``'s (no memory of its own), laid out for ``shape``'s
    capacity. Only one bucket of an exchange runs at a time."""

    def __init__(self, shape: ExchangeShape, device: torch.device | str, *,
                 base: "ExchangeBuffers | None" = None) -> None:  # fmt: skip
        s = shape
        W, C, B, H = s.num_ranks, s.capacity, s.max_local, s.num_q_heads
        self.shape = s
        kw = dict(device=device)

        def new(name: str, size: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            if base is None:
                return torch.zeros(size, dtype=dtype, **kw)
            return _front(getattr(base, name), size)

        self.q_in = new("q_in", (B, H, s.head_dim), s.dtype)  # caller writes here
        self.out = new("out", (B, H, s.v_head_dim), s.dtype)  # merged attention
        self.out_lse = new("out_lse", (B, H), torch.float32)
        self.q_items = new("q_items", (s.num_items, H, s.head_dim), s.dtype)
        self.q_send = new("q_send", (W, s.q_msg_bytes), torch.uint8)
        self.q_recv = new("q_recv", (W, s.q_msg_bytes), torch.uint8)
        self.r_send = new("r_send", (W, s.out_msg_bytes), torch.uint8)
        self.r_recv = new("r_recv", (W, s.out_msg_bytes), torch.uint8)
        self.send_index = new("send_index", (W * C,), torch.long)
        self.kv_indptr = new("kv_indptr", (s.num_items + 1,), torch.int32)
        self.kv_indices = new("kv_indices", (max(s.max_kv_slots, 1),), torch.long)
        self.merge_index = new("merge_index", (s.num_items,), torch.long)
        self.seg_indptr = new("seg_indptr", (B + 2,), torch.long)
        # typed windows into the byte messages
        hdr = HEADER_BYTES
        self.q_send_hdr = _view(self.q_send, 0, hdr, torch.int32, 4)
        self.q_recv_hdr = _view(self.q_recv, 0, hdr, torch.int32, 4)
        self.q_send_rows = _view(self.q_send, hdr, s.q_bytes, s.dtype, C, H, s.head_dim)
        self.q_recv_rows = _view(self.q_recv, hdr, s.q_bytes, s.dtype, C, H, s.head_dim)
        lse_off = hdr + _round16(s.o_bytes)
        self.r_send_hdr = _view(self.r_send, 0, hdr, torch.int32, 4)
        self.r_recv_hdr = _view(self.r_recv, 0, hdr, torch.int32, 4)
        self.r_send_o = _view(self.r_send, hdr, s.o_bytes, s.dtype, C, H, s.v_head_dim)
        self.r_recv_o = _view(self.r_recv, hdr, s.o_bytes, s.dtype, C, H, s.v_head_dim)
        self.r_send_lse = _view(self.r_send, lse_off, s.lse_bytes, torch.float32, C, H)
        self.r_recv_lse = _view(self.r_recv, lse_off, s.lse_bytes, torch.float32, C, H)
        self.meta: StepMeta | None = None

    def copy_from(self, meta: StepMeta) -> None:
        """Load one round's metadata in place (no tensor a graph reads is replaced)."""
        self.send_index.copy_(meta.send_index, non_blocking=True)
        self.kv_indptr.copy_(meta.kv_indptr, non_blocking=True)
        n = meta.kv_indices.numel()
        if n:
            self.kv_indices[:n].copy_(meta.kv_indices, non_blocking=True)
        self.merge_index.copy_(meta.merge_index, non_blocking=True)
        self.seg_indptr.copy_(meta.seg_indptr, non_blocking=True)
        self.q_send_hdr[:, HDR_COUNT].copy_(meta.send_count, non_blocking=True)
        self.q_send_hdr[:, HDR_TAG].fill_(meta.tag)
        self.r_send_hdr[:, HDR_COUNT].copy_(meta.recv_count, non_blocking=True)
        self.r_send_hdr[:, HDR_TAG].fill_(meta.tag)
        self.meta = meta

    def data_ptrs(self) -> dict[str, int]:
        """Addresses of every static tensor (tests check they never move)."""
        return {k: v.data_ptr() for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    def check_headers(self, rank: int) -> None:
        """Compare the counts that arrived with what the route expects (eager debugging; reads
        device memory, so never inside a captured graph)."""
        m = self.meta
        assert m is not None
        got_q = self.q_recv_hdr[:, HDR_COUNT].cpu()
        got_r = self.r_recv_hdr[:, HDR_COUNT].cpu()
        tags = torch.cat([self.q_recv_hdr[:, HDR_TAG], self.r_recv_hdr[:, HDR_TAG]]).cpu()
        for p in range(self.shape.num_ranks):
            if int(got_q[p]) != int(m.recv_count[p]) or int(got_r[p]) != int(m.send_count[p]):
                raise RuntimeError(
                    f"rank {rank}: route mismatch with peer {p}: received {int(got_q[p])} "
                    f"queries (expected {int(m.recv_count[p])}) and {int(got_r[p])} outputs "
                    f"(expected {int(m.send_count[p])})"
                )
        if not bool((tags == m.tag).all()):
            raise RuntimeError(f"rank {rank}: peers are at tags {tags.tolist()}, expected {m.tag}")
