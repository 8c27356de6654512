"""prefix_attention (row tiles against KV spans) against a float64 reference, poisoned outputs.

Runs compiled on CUDA where a GPU is visible, else under the Triton interpreter on CPU
(test/conftest.py sets TRITON_INTERPRET=1). The axes of issue 25 (rows 1-300 per tile, spans
0-5000 tokens, page sizes 1/16/64, GQA groups 1/4/8, MLA 576/512, fp32/fp16/bf16/FP8 KV) are
covered by a few cases each plus a small random sweep, to keep the interpreter's CPU time low.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_inputs import DEVICE

from sglang_dcp.kernels import prefix_attention, prefix_attention_ref

FP8 = torch.float8_e4m3fn


def make_prefix_inputs(*, seed, tiles, num_heads, num_kv_heads, head_dim, head_dim_v, dtype,
                       kv_dtype=None, mla=False, page=1):  # fmt: skip
    """``tiles``: (rows, span, kv_seen0 or None = non-causal, span id) per tile; tiles with the
    same span id share one span (as a chunk's tiles on a shard rank do). Spans are whole pages of
    ``page`` slots in random page order (the last page partly used), on a pool with spare pages."""
    g = torch.Generator().manual_seed(seed)
    kv_dtype = kv_dtype or dtype
    spans: dict[int, int] = {}
    for _, n, _, sid in tiles:
        spans.setdefault(sid, n)
    pages_needed = sum(-(-n // page) for n in spans.values()) + 3
    num_slots = pages_needed * page
    order = torch.randperm(pages_needed, generator=g)
    indices, where, used = [], {}, 0
    for sid, n in spans.items():
        p = -(-n // page)
        pages = order[used : used + p]
        used += p
        slots = (pages[:, None] * page + torch.arange(page)[None, :]).reshape(-1)[:n]
        where[sid] = (len(indices), n)
        indices += slots.tolist()
    num_rows = sum(t[0] for t in tiles) + 5  # spare rows: no tile writes them
    rows_order = torch.randperm(len(tiles), generator=g).tolist()  # tiles out of row order
    meta, q0 = [None] * len(tiles), 2
    for i in rows_order:
        r, n, seen0, sid = tiles[i]
        a, _ = where[sid]
        meta[i] = [q0, r, a, n, n if seen0 is None else seen0]
        q0 += r
    q = torch.randn(num_rows, num_heads, head_dim, generator=g).to(dtype)
    k = (torch.randn(num_slots, num_kv_heads, head_dim, generator=g) * 1.5).to(kv_dtype)
    v = None if mla else torch.randn(num_slots, num_kv_heads, head_dim_v, generator=g).to(kv_dtype)
    k = k.to(DEVICE)
    v = k[..., :head_dim_v] if mla else v.to(DEVICE)
    t = torch.tensor(meta, dtype=torch.int32).reshape(-1, 5).to(DEVICE)
    idx = torch.tensor(indices, dtype=torch.int64).to(DEVICE)
    return q.to(DEVICE), k, v, t, idx


def _tolerance(dtype):
    return {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}[dtype]


def _run_and_check(q, k, v, tiles, idx, *, dtype, k_scale=None, v_scale=None):
    sm = q.shape[2] ** -0.5
    max_rows = int(tiles[:, 1].max()) if tiles.numel() else 0
    o = torch.full((q.shape[0], q.shape[1], v.shape[2]), math.nan, dtype=dtype, device=DEVICE)
    lse = torch.full(q.shape[:2], math.nan, dtype=torch.float32, device=DEVICE)
    got_o, got_lse = prefix_attention(q, k, v, tiles, idx, sm, max_rows=max_rows,
                                      k_scale=k_scale, v_scale=v_scale, out=(o, lse))  # fmt: skip
    assert got_o is o and got_lse is lse
    ref_o, ref_lse = prefix_attention_ref(
        q, k, v, tiles.cpu(), idx.cpu(), sm, k_scale=k_scale, v_scale=v_scale,
        out=(torch.full(o.shape, math.nan, dtype=torch.float64),
             torch.full(lse.shape, math.nan, dtype=torch.float64)),
        compute_dtype=torch.float64,
    )  # fmt: skip
    covered = torch.zeros(q.shape[0], dtype=torch.bool)
    for q0, r, *_ in tiles.tolist():
        covered[q0 : q0 + r] = True
    o, lse = o.cpu(), lse.cpu()
    assert torch.isnan(o[~covered]).all() and torch.isnan(lse[~covered]).all(), "wrote past tiles"
    o, lse, ref_o, ref_lse = o[covered], lse[covered], ref_o[covered], ref_lse[covered]
    assert not torch.isnan(o).any() and not torch.isnan(lse).any(), "unwritten or NaN output"
    torch.testing.assert_close(o.double(), ref_o, atol=_tolerance(dtype), rtol=1e-2)
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty)
    assert (o[empty] == 0).all()
    torch.testing.assert_close(lse[~empty].double(), ref_lse[~empty], atol=1e-4, rtol=1e-5)


# (id, heads, kv heads, head_dim, head_dim_v, dtype, kv dtype, mla)
GEOMETRIES = [
    ("gqa1-d64-fp32", 2, 2, 64, 64, torch.float32, None, False),
    ("gqa4-d128-fp16", 8, 2, 128, 128, torch.float16, None, False),
    ("gqa8-d64-bf16", 16, 2, 64, 64, torch.bfloat16, None, False),
    ("gqa8-d128-fp8kv", 8, 1, 128, 128, torch.bfloat16, FP8, False),
    ("mla-h16-bf16", 16, 1, 576, 512, torch.bfloat16, None, True),
    ("mla-h8-fp8kv", 8, 1, 576, 512, torch.float16, FP8, True),
]

# a chunk's guest tiles sharing one span (non-causal), its causal home tile with a prefix,
# a one-row tile (decode), an empty span, a causal tile whose first rows see nothing
TILES = [(64, 150, None, 0), (19, 150, None, 0), (33, 90, 58, 1), (1, 40, None, 2),
         (7, 0, None, 3), (9, 30, 0, 4)]  # fmt: skip


@pytest.mark.parametrize("geom", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_matches_float64_reference(poison, geom):
    name, heads, kv_heads, d, dv, dtype, kv_dtype, mla = geom
    q, k, v, tiles, idx = make_prefix_inputs(
        seed=zlib.crc32(name.encode()), tiles=TILES, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=d, head_dim_v=dv, dtype=dtype, kv_dtype=kv_dtype, mla=mla, page=16,
    )  # fmt: skip
    ks = vs = None
    if kv_dtype is FP8:  # the two forms: a device tensor and a python float
        ks, vs = torch.tensor([0.7], device=DEVICE), 1.3
    _run_and_check(q, k, v, tiles, idx, dtype=dtype, k_scale=ks, v_scale=vs)


@pytest.mark.parametrize("page", [1, 16, 64])
def test_page_sizes(poison, page):
    q, k, v, tiles, idx = make_prefix_inputs(
        seed=page, tiles=[(40, 333, None, 0), (40, 200, 160, 1)], num_heads=4, num_kv_heads=1,
        head_dim=32, head_dim_v=32, dtype=torch.float32, page=page,
    )  # fmt: skip
    _run_and_check(q, k, v, tiles, idx, dtype=torch.float32)


@pytest.mark.parametrize(
    "rows,span,seen0",
    [(300, 64, None), (1, 5000, None), (128, 5000, 4873), (300, 300, 1)],
    ids=["300rows", "1row-5000", "causal-5000", "causal-300-from0"],
)
def test_extremes(poison, rows, span, seen0):
    """The issue's ranges: 300 rows per tile, 5000-token spans, causal over the whole chunk."""
    q, k, v, tiles, idx = make_prefix_inputs(
        seed=rows + span, tiles=[(rows, span, seen0, 0)], num_heads=4, num_kv_heads=4,
        head_dim=16, head_dim_v=16, dtype=torch.float32, page=64,
    )  # fmt: skip
    _run_and_check(q, k, v, tiles, idx, dtype=torch.float32)


def test_float_scales_are_not_tensors(poison, monkeypatch):
    """A python-float FP8 scale is folded into the launch: no tensor is made per call."""
    q, k, v, tiles, idx = make_prefix_inputs(
        seed=5, tiles=[(8, 20, None, 0)], num_heads=4, num_kv_heads=1, head_dim=64,
        head_dim_v=64, dtype=torch.float16, kv_dtype=FP8,
    )  # fmt: skip
    from sglang_dcp.kernels.prefix_ops import _scales

    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **kw: pytest.fail("torch.tensor per call"))
    qk, k_ptr, v_mul, v_ptr = _scales(0.5, 0.25, 2.0)
    monkeypatch.setattr(torch, "tensor", real)
    assert k_ptr is None and v_ptr is None and v_mul == 2.0 and qk == pytest.approx(0.5 * 0.25 / math.log(2))
    _run_and_check(q, k, v, tiles, idx, dtype=torch.float16, k_scale=0.25, v_scale=2.0)


def test_no_tiles_and_bad_tiles():
    q, k, v, tiles, idx = make_prefix_inputs(
        seed=6, tiles=[(4, 10, None, 0)], num_heads=2, num_kv_heads=1, head_dim=16,
        head_dim_v=16, dtype=torch.float32,
    )  # fmt: skip
    prefix_attention(q, k, v, tiles[:0], idx, 0.25, max_rows=0)
    with pytest.raises(ValueError, match="max_rows"):
        prefix_attention(q, k, v, tiles, idx, 0.25, max_rows=3)
    bad = tiles.clone()
    bad[0, 3] = idx.numel() + 1
    with pytest.raises(ValueError, match="tiles"):
        prefix_attention(q, k, v, bad, idx, 0.25, max_rows=4)


@settings(max_examples=8, deadline=None)
@given(
    tiles=st.lists(
        st.tuples(st.integers(1, 70), st.integers(0, 260), st.one_of(st.none(), st.integers(0, 300)),
                  st.integers(0, 2)),
        min_size=1, max_size=4,
    ),
    group=st.sampled_from([1, 4, 8]),
    page=st.sampled_from([1, 16, 64]),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_random_tiles(tiles, group, page, seed):
    span = {}
    tiles = [(r, span.setdefault(sid, n), s0, sid) for r, n, s0, sid in tiles]
    q, k, v, t, idx = make_prefix_inputs(
        seed=seed, tiles=tiles, num_heads=group, num_kv_heads=1, head_dim=32, head_dim_v=32,
        dtype=torch.float32, page=page,
    )  # fmt: skip
    _run_and_check(q, k, v, t, idx, dtype=torch.float32)
