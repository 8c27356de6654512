"""``sglang_dcp.kernels.interpreter``: the interpreter's per-call patching, cached, leaves
``triton.language`` exactly as Triton's own patching does and gives the same outputs."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import make_decode_inputs

from sglang_dcp.kernels import decode_attention, kernels_interpreted
from sglang_dcp.kernels import interpreter as cache

pytestmark = pytest.mark.skipif(not kernels_interpreted(), reason="TRITON_INTERPRET=1 only")


def _state():
    """Which attributes of the patched modules hold a builtin, and of what kind the others are
    (a patch wrapper is a new object every time: kinds, not identities)."""
    import triton.language as tl

    def kind(x):
        return "builtin" if tl.core.is_builtin(x) else type(x).__name__

    return {(getattr(mod, "__name__", "?"), n): kind(getattr(mod, n))
            for mod in (tl, tl.core, tl.math, tl.tensor) for n in dir(mod)
            if not n.startswith("__")}


def _run():
    q, k, v, indptr, indices = make_decode_inputs(  # three items, one long enough to split
        seed=3, lens=[5, 700, 64], num_heads=4, num_kv_heads=2, head_dim=32, head_dim_v=32,
        dtype=torch.float32)  # fmt: skip
    return decode_attention(q, k, v, indptr, indices, 32 ** -0.5, impl="triton")


def test_cached_patching_matches_the_interpreters_own(monkeypatch):
    from triton.runtime import interpreter as interp

    assert getattr(interp._patch_builtin, "_sglang_dcp_cached", False)  # installed at import
    assert cache.install()  # idempotent
    o_cached, lse_cached = _run()
    after_cached = _state()
    original = interp._patch_builtin.__wrapped_original__
    monkeypatch.setattr(interp, "_patch_builtin", original)
    o, lse = _run()
    assert torch.equal(o, o_cached) and torch.equal(lse, lse_cached)
    assert _state() == after_cached  # the same attributes left patched (or not) afterwards
