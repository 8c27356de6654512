"""Random decode inputs shared by the kernel tests (bench/kernels_cases.py makes its own)."""

from __future__ import annotations

import torch

# Where the kernel suite runs: CUDA (compiled Triton) when a GPU is visible, else the CPU (the
# Triton interpreter, test/conftest.py). Inputs are drawn on the CPU either way, so a seed gives
# the same numbers on both.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_decode_inputs(
    *,
    seed: int,
    lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    head_dim_v: int,
    dtype: torch.dtype,
    kv_dtype: torch.dtype | None = None,
    mla: bool = False,
    index_dtype: torch.dtype = torch.int32,
    spare_slots: int = 37,
    device: torch.device = DEVICE,
):
    """Fresh random q and KV pool on ``device``; each item's slots are scattered over a pool
    larger than the slots used (random order, no two items sharing a slot)."""
    g = torch.Generator().manual_seed(seed)
    kv_dtype = kv_dtype or dtype
    nnz = sum(lens)
    num_slots = nnz + spare_slots
    q = torch.randn(len(lens), num_heads, head_dim, generator=g).to(dtype)
    k = (torch.randn(num_slots, num_kv_heads, head_dim, generator=g) * 1.5).to(kv_dtype)
    if mla:
        v = k[..., :head_dim_v]
    else:
        v = torch.randn(num_slots, num_kv_heads, head_dim_v, generator=g).to(kv_dtype)
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.tensor(lens, dtype=torch.int64).cumsum(0)
    indices = torch.randperm(num_slots, generator=g)[:nnz].to(index_dtype)
    k = k.to(device)
    v = k[..., :head_dim_v] if mla else v.to(device)  # MLA: V stays a view of K
    return q.to(device), k, v, indptr.to(device), indices.to(device)
