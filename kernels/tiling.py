"""The stage-1 decode kernel's tiling for one (q, k, v) geometry (``DecodeConfig``) and how a
batch's items are cut into chunks (``SplitPlan``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from .dispatch import kernels_interpreted

# Partial rows (fp32, written then read back) may cost at most this fraction of a chunk's KV bytes;
# it sets the shortest chunk worth splitting off.
_PARTIAL_BYTES_BUDGET = 0.25
_CTAS_PER_SM = 4  # stage-1 programs per SM the split heuristic aims for
_INTERPRETER_CTAS = 16  # keeps interpreted runs cheap; any value is correct
_SM_COUNT: dict[int, int] = {}


def _target_ctas(device: torch.device) -> int:
    if device.type != "cuda":
        return _INTERPRETER_CTAS
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _CTAS_PER_SM * _SM_COUNT[index]


@dataclass(frozen=True)
class DecodeConfig:
    """Compile-time tiling of the stage-1 kernel for one (q, k, v) geometry."""

    group: int
    block_h: int
    block_d: int
    block_dpe: int
    block_dv: int
    block_n: int
    use_dot: bool
    dot_fp32: bool
    v_from_k: bool
    num_warps: int
    num_stages: int

    @property
    def head_tiles_per_kv(self) -> int:
        return triton.cdiv(self.group, self.block_h)


def decode_config(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor) -> DecodeConfig:
    num_heads, head_dim = q.shape[1], q.shape[2]
    head_dim_v = v_buffer.shape[2]
    group = num_heads // k_buffer.shape[1]
    use_dot = group >= 4  # tensor cores need 16 rows; below 4 heads the padding wastes too much
    block_h = 16 if use_dot else triton.next_power_of_2(group)
    block_d = 16 if head_dim < 16 else 1 << (head_dim.bit_length() - 1)
    rest = head_dim - block_d
    block_dpe = 0 if rest <= 0 else max(16, triton.next_power_of_2(rest))
    block_dv = max(16, triton.next_power_of_2(head_dim_v))
    v_from_k = (
        v_buffer.data_ptr() == k_buffer.data_ptr()
        and v_buffer.stride() == k_buffer.stride()
        and v_buffer.dtype == k_buffer.dtype
        and head_dim_v == block_d
    )
    if use_dot:
        block_n = 32 if block_d >= 256 else 64
    else:
        block_n = max(16, 64 // block_h)
    interpreted = kernels_interpreted()
    dot_fp32 = q.dtype == torch.float32 or (interpreted and q.dtype == torch.bfloat16)
    return DecodeConfig(
        group=group,
        block_h=block_h,
        block_d=block_d,
        block_dpe=block_dpe,
        block_dv=block_dv,
        block_n=block_n,
        use_dot=use_dot,
        dot_fp32=dot_fp32,
        v_from_k=v_from_k,
        num_warps=4,
        num_stages=2 if block_d >= 256 else 3,
    )


@dataclass(frozen=True)
class SplitPlan:
    """How items are cut into chunks (see ``decode_kernels._find_chunk``)."""

    auto: bool
    rows: int  # partial-buffer rows: an upper bound on the total number of chunks
    min_chunk: int
    target_chunks: int
    max_splits: int


def split_plan(
    num_items: int, cfg: DecodeConfig, *, num_heads: int, num_kv_heads: int, head_dim: int,
    head_dim_v: int, kv_elem_bytes: int, device: torch.device, num_kv_splits: int | None,
) -> SplitPlan:
    """Forced: every item cut into ``min(num_kv_splits, cdiv(len, BLOCK_N))`` chunks. Auto: one
    chunk length for the whole batch, ``max(total_len / C, min_chunk)``, with ``C`` chunks per
    head tile enough to fill the GPU on their own, so a lone long item is spread over the GPU and a
    batch of short items keeps one chunk each. ``min_chunk`` keeps the fp32 partial traffic
    (written and read back) under a quarter of the KV bytes the chunk reads."""
    if num_kv_splits is not None:
        s = int(num_kv_splits)
        return SplitPlan(False, max(1, num_items * s), cfg.block_n, 0, s)
    head_tiles = num_kv_heads * cfg.head_tiles_per_kv
    target = max(1, triton.cdiv(_target_ctas(device), head_tiles))
    kv_bytes_per_token = num_kv_heads * head_dim * kv_elem_bytes
    if not cfg.v_from_k:
        kv_bytes_per_token += num_kv_heads * head_dim_v * kv_elem_bytes
    partial_bytes_per_row = num_heads * head_dim_v * 4 * 2
    min_chunk = math.ceil(partial_bytes_per_row / (_PARTIAL_BYTES_BUDGET * kv_bytes_per_token))
    min_chunk = triton.cdiv(max(min_chunk, 2 * cfg.block_n), cfg.block_n) * cfg.block_n
    return SplitPlan(True, num_items + target, min_chunk, target, target)
