"""merge_attention_states against the float64 torch reference, and the LSE base helpers."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_inputs import DEVICE

from sglang_dcp.kernels import (
    lse_base2_to_natural,
    lse_natural_to_base2,
    merge_attention_states,
    merge_attention_states_ref,
)


def _parts(seed, counts, num_heads, head_dim_v, dtype, *, dead_fraction=0.2):
    g = torch.Generator().manual_seed(seed)
    num_parts = sum(counts)
    o = torch.randn(num_parts, num_heads, head_dim_v, generator=g).to(dtype)
    lse = torch.randn(num_parts, num_heads, generator=g) * 4
    dead = torch.rand(num_parts, num_heads, generator=g) < dead_fraction
    lse[dead] = -math.inf
    o[dead] = math.nan  # an empty part's o is garbage: it must never be read into the sum
    seg = torch.zeros(len(counts) + 1, dtype=torch.int32)
    seg[1:] = torch.tensor(counts).cumsum(0)
    return o.to(DEVICE), lse.to(DEVICE), seg.to(DEVICE)


CASES = [
    # (counts per row, num_heads, head_dim_v, dtype)
    ([1, 3, 0, 8, 2], 8, 128, torch.float32),
    ([2, 2, 5], 12, 96, torch.float16),
    ([4, 1, 1, 16], 128, 512, torch.bfloat16),
    ([3], 1, 16, torch.float32),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"h{c[1]}-dv{c[2]}-{str(c[3])[6:]}")
def test_matches_reference(poison, case):
    counts, num_heads, head_dim_v, dtype = case
    o_parts, lse_parts, seg = _parts(len(counts) * num_heads, counts, num_heads, head_dim_v, dtype)
    o, lse = merge_attention_states(o_parts, lse_parts, seg)
    ref_o, ref_lse = merge_attention_states_ref(o_parts, lse_parts, seg, compute_dtype=torch.float64)
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert not torch.isnan(o).any() and not torch.isnan(lse).any()
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(o.double(), ref_o.double(), atol=tol, rtol=1e-2)
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-5, rtol=1e-6)


def test_empty_rows_and_all_dead_rows(poison):
    o_parts, lse_parts, seg = _parts(5, [0, 2, 0], 4, 32, torch.float32, dead_fraction=0.0)
    lse_parts[:] = -math.inf
    o, lse = merge_attention_states(o_parts, lse_parts, seg)
    assert (o == 0).all() and torch.isneginf(lse).all()


def test_offset_and_noncontiguous_parts(poison):
    """seg_indptr need not start at 0, and parts may be a strided view."""
    base, lse_parts, _ = _parts(6, [9], 8, 64, torch.float32, dead_fraction=0.0)
    o_parts = base[:, ::2]  # heads stride 2
    lse_parts = lse_parts[:, ::2].contiguous()
    seg = torch.tensor([2, 5, 9], dtype=torch.int64, device=DEVICE)
    o, lse = merge_attention_states(o_parts, lse_parts, seg)
    ref_o, ref_lse = merge_attention_states_ref(o_parts, lse_parts, seg, compute_dtype=torch.float64)
    torch.testing.assert_close(o.double(), ref_o.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-5, rtol=1e-6)


def test_single_part_is_identity(poison):
    o_parts, lse_parts, seg = _parts(7, [1, 1], 4, 64, torch.bfloat16, dead_fraction=0.0)
    o, lse = merge_attention_states(o_parts, lse_parts, seg)
    assert torch.equal(o, o_parts)
    torch.testing.assert_close(lse, lse_parts, atol=1e-6, rtol=1e-6)


def test_torch_impl_matches_triton():
    o_parts, lse_parts, seg = _parts(8, [3, 1, 4], 8, 64, torch.float32)
    o_t, lse_t = merge_attention_states(o_parts, lse_parts, seg, impl="triton")
    o_r, lse_r = merge_attention_states(o_parts, lse_parts, seg, impl="torch")
    torch.testing.assert_close(o_t, o_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_t, lse_r, atol=1e-5, rtol=1e-6)


def test_lse_base_conversion_roundtrip():
    x = torch.randn(5, 7) * 10
    x[0, 0] = -math.inf
    b2 = lse_natural_to_base2(x)
    # base-2 LSE of the same scores: log2(sum 2^(s*log2 e)) == lse * log2 e
    s = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(
        lse_natural_to_base2(torch.logsumexp(s, 0)),
        torch.log2(torch.exp2(s / math.log(2)).sum(0)),
    )
    torch.testing.assert_close(lse_base2_to_natural(b2), x)
    assert torch.isneginf(b2[0, 0])
