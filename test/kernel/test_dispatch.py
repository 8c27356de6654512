"""impl="auto" | "triton" | "torch" dispatch, and the torch path on its own."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from kernel_inputs import make_decode_inputs

from sglang_dcp.kernels import decode_attention, decode_attention_ref


def _inputs():
    return make_decode_inputs(
        seed=4, lens=[0, 7, 130], num_heads=8, num_kv_heads=2, head_dim=64, head_dim_v=64,
        dtype=torch.float32,
    )


def test_torch_impl_equals_reference():
    q, k, v, indptr, indices = _inputs()
    o, lse = decode_attention(q, k, v, indptr, indices, 0.125, impl="torch")
    ref_o, ref_lse = decode_attention_ref(q, k, v, indptr, indices, 0.125)
    assert torch.equal(o, ref_o) and torch.equal(lse, ref_lse)


def test_triton_and_torch_agree():
    q, k, v, indptr, indices = _inputs()
    o_t, lse_t = decode_attention(q, k, v, indptr, indices, 0.125, impl="triton")
    o_r, lse_r = decode_attention(q, k, v, indptr, indices, 0.125, impl="torch")
    torch.testing.assert_close(o_t, o_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_t, lse_r, atol=1e-5, rtol=1e-6)


PROBE = """
import torch
from sglang_dcp.kernels import decode_attention, kernels_interpreted
q = torch.randn(2, 4, 16); k = torch.randn(9, 2, 16); v = torch.randn(9, 2, 16)
ptr = torch.tensor([0, 3, 9], dtype=torch.int32); idx = torch.arange(9, dtype=torch.int32)
o, lse = decode_attention(q, k, v, ptr, idx, 0.25)  # auto -> torch reference
assert not kernels_interpreted() and o.shape == (2, 4, 16)
try:
    decode_attention(q, k, v, ptr, idx, 0.25, impl="triton")
except ValueError as e:
    assert str(e).startswith("impl:"), e
    print("ok")
"""


def test_auto_uses_torch_on_cpu_without_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
