"""Static exchange buffers, one layout per per-peer capacity (bucket).

In a step each rank sends every peer exactly ``capacity`` rows per round (the step's bucket,
``wire.bucket_for``), whatever the route, so the ``all_to_all_single`` splits of a bucket never
change and the CUDA graph captured for it stays valid on replay. A smaller bucket's buffers are
views of the front of the largest's (``ExchangeBuffers(..., base=...)``). The
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

``static.StaticExchange`` lays each step's route out in these buffers in place (the one loader,
used by the server and the self-check); nothing a graph reads is ever reallocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dcp.exchange.wire import HEADER_BYTES


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

    def data_ptrs(self) -> dict[str, int]:
        """Addresses of every static tensor (tests check they never move)."""
        return {k: v.data_ptr() for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
