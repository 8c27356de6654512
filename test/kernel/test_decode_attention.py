"""decode_attention against a float64 reference, and the splitting property.

Runs compiled on CUDA where a GPU is visible, else under the Triton interpreter on CPU
(test/conftest.py sets TRITON_INTERPRET=1); every case keeps (programs x loop iterations) to a few
hundred.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_inputs import DEVICE, make_decode_inputs

from sglang_dcp.kernels import (
    decode_attention,
    decode_attention_ref,
    kernels_interpreted,
    merge_attention_states,
)
from sglang_dcp.kernels.tiling import DecodeConfig, split_plan

FP8 = torch.float8_e4m3fn

# (id, num_heads, num_kv_heads, head_dim, head_dim_v, dtype, kv_dtype, mla)
GEOMETRIES = [
    ("mha-d64-fp32", 4, 4, 64, 64, torch.float32, None, False),
    ("mha-d128-fp16", 3, 3, 128, 128, torch.float16, None, False),
    ("gqa2-d96-bf16", 4, 2, 96, 96, torch.bfloat16, None, False),
    ("gqa4-d96-fp16", 8, 2, 96, 96, torch.float16, None, False),
    ("gqa8-d128-bf16", 16, 2, 128, 128, torch.bfloat16, None, False),
    ("gqa16-d128-fp32", 16, 1, 128, 128, torch.float32, None, False),
    ("gqa16-d64-fp16", 32, 2, 64, 64, torch.float16, None, False),
    ("mla-h16-bf16", 16, 1, 576, 512, torch.bfloat16, None, True),
    ("mla-h8-fp16", 8, 1, 576, 512, torch.float16, None, True),
    ("gqa8-d128-fp8kv", 16, 2, 128, 128, torch.bfloat16, FP8, False),
    ("mla-h16-fp8kv", 16, 1, 576, 512, torch.bfloat16, FP8, True),
]

# lengths: empty, single-token and one item much longer than the rest
LENS = [0, 1, 45, 700, 3]


def _tolerance(dtype: torch.dtype) -> float:
    # bf16: the interpreter truncates fp32->bf16 (GPU rounds to nearest), so allow ~2 ulp at |o|~2;
    # fp16: p is cast to fp16 for the P.V dot, as on the GPU
    return {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}[dtype]


def _assert_close_to_ref(o, lse, ref_o, ref_lse, dtype):
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert not torch.isnan(o).any(), "unwritten or NaN output"
    assert not torch.isnan(lse).any(), "unwritten or NaN lse"
    torch.testing.assert_close(o.double(), ref_o.double(), atol=_tolerance(dtype), rtol=1e-2)
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty)
    torch.testing.assert_close(lse[~empty].double(), ref_lse[~empty].double(), atol=1e-4, rtol=1e-5)
    assert (o[empty] == 0).all()


@pytest.mark.parametrize("num_kv_splits", [None, 3], ids=["auto", "forced3"])
@pytest.mark.parametrize("geom", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_matches_float64_reference(poison, geom, num_kv_splits):
    name, num_heads, num_kv_heads, head_dim, head_dim_v, dtype, kv_dtype, mla = geom
    seed = zlib.crc32(f"{name}/{num_kv_splits}".encode())
    q, k, v, indptr, indices = make_decode_inputs(
        seed=seed, lens=LENS, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        head_dim_v=head_dim_v, dtype=dtype, kv_dtype=kv_dtype, mla=mla,
        index_dtype=torch.int64 if num_kv_splits else torch.int32,
    )
    k_scale = v_scale = None
    if kv_dtype is FP8:
        k_scale, v_scale = torch.tensor([0.7], device=DEVICE), 1.3  # tensor and float forms
    sm_scale = head_dim**-0.5
    o, lse = decode_attention(
        q, k, v, indptr, indices, sm_scale, num_kv_splits=num_kv_splits, k_scale=k_scale,
        v_scale=v_scale,
    )
    ref_o, ref_lse = decode_attention_ref(
        q, k, v, indptr, indices, sm_scale, k_scale=k_scale, v_scale=v_scale,
        compute_dtype=torch.float64,
    )
    _assert_close_to_ref(o, lse, ref_o.double(), ref_lse.double(), dtype)


def test_reference_is_float64_exact_on_fp64_inputs():
    """The oracle itself: compare against a direct softmax on one item."""
    q, k, v, indptr, indices = make_decode_inputs(
        seed=1, lens=[9], num_heads=4, num_kv_heads=2, head_dim=8, head_dim_v=8,
        dtype=torch.float64,
    )
    o, lse = decode_attention_ref(q, k, v, indptr, indices, 0.3, compute_dtype=torch.float64)
    kk = k[indices.long()].repeat_interleave(2, dim=1)  # [len, heads, d]
    vv = v[indices.long()].repeat_interleave(2, dim=1)
    s = torch.einsum("hd,lhd->hl", q[0], kk) * 0.3
    torch.testing.assert_close(o[0].double(), torch.einsum("hl,lhd->hd", s.softmax(-1), vv))
    torch.testing.assert_close(lse[0].double(), torch.logsumexp(s, -1), atol=1e-6, rtol=1e-6)


def test_all_items_empty(poison):
    q, k, v, indptr, indices = make_decode_inputs(
        seed=2, lens=[0, 0, 0], num_heads=16, num_kv_heads=2, head_dim=64, head_dim_v=64,
        dtype=torch.float16,
    )
    o, lse = decode_attention(q, k, v, indptr, indices, 0.125)
    assert (o == 0).all() and torch.isneginf(lse).all()


def test_skewed_batch_is_spread(poison):
    """One long item among short ones: the auto plan cuts the long one into several chunks."""
    lens = [1500] + [20] * 7
    q, k, v, indptr, indices = make_decode_inputs(
        seed=3, lens=lens, num_heads=16, num_kv_heads=2, head_dim=64, head_dim_v=64,
        dtype=torch.float32,
    )
    o, lse = decode_attention(q, k, v, indptr, indices, 0.125)
    ref_o, ref_lse = decode_attention_ref(q, k, v, indptr, indices, 0.125, compute_dtype=torch.float64)
    _assert_close_to_ref(o, lse, ref_o, ref_lse, torch.float32)


def _python_chunks(lens, plan, block_n):
    """Mirror of decode_kernels._find_chunk's per-item chunk count."""
    total = sum(lens)
    floor = max(math.ceil(total / plan.target_chunks), plan.min_chunk) if plan.auto else plan.min_chunk
    counts = []
    for n in lens:
        c = max(math.ceil(n / plan.max_splits), floor)
        c = math.ceil(c / block_n) * block_n
        counts.append(max(1, math.ceil(n / c)))
    return counts


@settings(max_examples=200, deadline=None)
@given(
    lens=st.lists(st.integers(0, 200_000), min_size=1, max_size=300),
    forced=st.one_of(st.none(), st.integers(1, 64)),
    num_heads=st.sampled_from([8, 16, 64, 128]),
)
def test_split_plan_bounds_chunks(lens, forced, num_heads):
    """The partial buffer always has a row for every chunk, for any mix of lengths, and a single
    long item gets enough chunks to fill the machine."""
    cfg = DecodeConfig(
        group=num_heads, block_h=16, block_d=512, block_dpe=64, block_dv=512, block_n=32,
        use_dot=True, dot_fp32=False, v_from_k=True, num_warps=4, num_stages=2,
    )
    plan = split_plan(
        len(lens), cfg, num_heads=num_heads, num_kv_heads=1, head_dim=576, head_dim_v=512,
        kv_elem_bytes=2, device=torch.device("cpu"), num_kv_splits=forced,
    )
    counts = _python_chunks(lens, plan, cfg.block_n)
    assert sum(counts) <= plan.rows
    if forced:
        assert max(counts) <= forced
    elif len(lens) == 1 and lens[0] >= plan.min_chunk * plan.target_chunks:
        assert counts[0] >= plan.target_chunks // 2  # rounding chunks up to BLOCK_N loses some


def _cut(n: int, cuts: list[int]) -> list[int]:
    points = sorted({min(c, n) for c in cuts})
    bounds = [0] + points + [n]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**20),
    total=st.integers(1, 400),
    cuts=st.lists(st.integers(0, 400), max_size=4),
    forced=st.sampled_from([None, 1, 2]),
)
def test_merge_of_pieces_equals_whole(seed, total, cuts, forced):
    """Attending over a slot list in one item == merging the partials of the same list cut into
    pieces (pieces may be empty), as when a request's KV is sharded over ranks."""
    q1, k, v, indptr, indices = make_decode_inputs(
        seed=seed, lens=[total], num_heads=16, num_kv_heads=2, head_dim=64, head_dim_v=64,
        dtype=torch.float32,
    )
    o_whole, lse_whole = decode_attention(q1, k, v, indptr, indices, 0.125, num_kv_splits=forced)

    pieces = _cut(total, cuts)
    q = q1.expand(len(pieces), -1, -1).contiguous()
    piece_ptr = torch.zeros(len(pieces) + 1, dtype=torch.int32)
    piece_ptr[1:] = torch.tensor(pieces).cumsum(0)
    piece_ptr = piece_ptr.to(DEVICE)
    o_parts, lse_parts = decode_attention(q, k, v, piece_ptr, indices, 0.125, num_kv_splits=forced)
    seg = torch.tensor([0, len(pieces)], dtype=torch.int32, device=DEVICE)
    o_merged, lse_merged = merge_attention_states(o_parts, lse_parts, seg)

    torch.testing.assert_close(o_merged, o_whole, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse_merged, lse_whole, atol=2e-5, rtol=1e-6)


def test_interpreter_is_on():
    """Guards the suite itself: these tests must exercise the Triton kernels, interpreted on a
    CPU machine and compiled (inputs on CUDA) where a GPU is."""
    if not torch.cuda.is_available():
        assert kernels_interpreted()
    else:
        assert DEVICE.type == "cuda" and not kernels_interpreted()
