"""Same inputs through SGLang 0.5.21's own ``decode_attention_fwd`` give the same output, and the
``logsumexp`` of its per-split LSE (what SGLang's own DCP path does) gives the same LSE.

fp16/fp32 only under the interpreter: SGLang's kernel has no bf16 upcast, and the interpreter's
bf16 ``tl.dot`` multiplies raw bit patterns (reference/cpu-toolchain.md 1.4).
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from kernel_inputs import make_decode_inputs

from sglang_dcp.kernels import decode_attention

# find_spec of a submodule: test/sglang/ (a folder of this suite) would pass for "sglang" itself
if importlib.util.find_spec("sglang.srt") is None:
    pytest.skip("SGLang is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def sglang_decode():
    if not torch.cuda.is_available():
        from sglang_dcp.sglang import cpu_compat

        cpu_compat.install()
    from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd

    return decode_attention_fwd


CASES = [
    # (id, num_heads, num_kv_heads, head_dim, head_dim_v, dtype, mla)
    ("mha-d64-fp32", 4, 4, 64, 64, torch.float32, False),
    ("gqa8-d128-fp16", 16, 2, 128, 128, torch.float16, False),
    ("gqa4-d96-fp32", 8, 2, 96, 96, torch.float32, False),
    ("mla-h16-fp16", 16, 1, 576, 512, torch.float16, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_sglang_decode_attention_fwd(sglang_decode, case):
    name, num_heads, num_kv_heads, head_dim, head_dim_v, dtype, mla = case
    lens = [1, 45, 300, 3]  # SGLang's stage 2 divides by zero on an empty item
    q, k, v, indptr, indices = make_decode_inputs(
        seed=11, lens=lens, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        head_dim_v=head_dim_v, dtype=dtype, mla=mla,
    )
    sm_scale = head_dim**-0.5
    max_splits = 4
    num_items = len(lens)
    dev = q.device
    sg_o = torch.zeros(num_items, num_heads, head_dim_v, dtype=dtype, device=dev)
    logits = torch.zeros(num_items, num_heads, max_splits, head_dim_v, dtype=torch.float32,
                         device=dev)  # fmt: skip
    split_lse = torch.full((num_items, num_heads, max_splits), -math.inf, dtype=torch.float32,
                           device=dev)  # fmt: skip
    num_kv_splits = torch.tensor([1, 2, 4, 3], dtype=torch.int32, device=dev)
    sglang_decode(
        q, k, v, sg_o, indptr, indices, logits, split_lse, num_kv_splits, max_splits, sm_scale,
        1.0, 1.0, has_mla=mla,
    )
    sg_lse = torch.logsumexp(split_lse, dim=-1)

    o, lse = decode_attention(q, k, v, indptr, indices, sm_scale)
    atol = 2e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(o.float(), sg_o.float(), atol=atol, rtol=1e-2)
    torch.testing.assert_close(lse, sg_lse, atol=1e-4, rtol=1e-5)
