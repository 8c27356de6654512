"""Compile the kernels for sm_90 without a GPU, exactly as ``ops.py`` launches them.

Run as a script with TRITON_INTERPRET unset (``test_compile.py`` does this in a subprocess with a
temporary TRITON_CACHE_DIR). Prints one line per kernel variant and exits non-zero on failure.
"""

import os
import sys

import torch

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sglang_dcp.kernels import ops  # noqa: E402
from sglang_dcp.kernels.decode_kernels import _decode_split_kernel  # noqa: E402
from sglang_dcp.kernels.merge_kernels import _merge_states_kernel  # noqa: E402
from sglang_dcp.kernels.prefix_kernels import _prefix_attn_kernel  # noqa: E402
from sglang_dcp.kernels.prefix_ops import prefix_launch_args  # noqa: E402

_PTR = {
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float32: "*fp32",
    torch.int32: "*i32",
    torch.int64: "*i64",
    torch.float8_e4m3fn: "*fp8e4nv",
}
_LAUNCH_OPTIONS = ("num_warps", "num_stages")


def compile_sm90(kernel, args, meta):
    signature, constexprs = {}, {}
    for name, value in zip(kernel.arg_names, args):
        if isinstance(value, torch.Tensor):
            signature[name] = _PTR[value.dtype]
        elif value is None:
            signature[name], constexprs[name] = "constexpr", None
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i64" if abs(value) >= 2**31 else "i32"
        else:
            signature[name] = "fp32"
    for name, value in meta.items():
        if name not in _LAUNCH_OPTIONS:
            signature[name], constexprs[name] = "constexpr", value
    options = {k: meta[k] for k in _LAUNCH_OPTIONS if k in meta}
    src = ASTSource(kernel, signature, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def decode_case(name, *, num_heads, num_kv_heads, head_dim, head_dim_v, dtype, kv_dtype=None,
                mla=False, num_kv_splits=None, scales=False):
    kv_dtype = kv_dtype or dtype
    q = torch.empty(4, num_heads, head_dim, dtype=dtype)
    k = torch.empty(64, num_kv_heads, head_dim, dtype=kv_dtype)
    v = k[..., :head_dim_v] if mla else torch.empty(64, num_kv_heads, head_dim_v, dtype=kv_dtype)
    indptr = torch.zeros(5, dtype=torch.int32)
    indices = torch.zeros(0, dtype=torch.int32)
    o = torch.empty(4, num_heads, head_dim_v, dtype=dtype)
    lse = torch.empty(4, num_heads, dtype=torch.float32)
    scale = torch.ones(1) if scales else None
    grid, args, meta, _ = ops.stage1_launch_args(
        q, k, v, indptr, indices, head_dim**-0.5, o=o, lse=lse, num_kv_splits=num_kv_splits,
        k_scale=scale, v_scale=scale,
    )
    return name, _decode_split_kernel, args, meta


def merge_case(name, *, num_heads, head_dim_v, dtype, min_parts):
    o_parts = torch.empty(8, num_heads, head_dim_v, dtype=dtype)
    lse_parts = torch.empty(8, num_heads, dtype=torch.float32)
    seg = torch.zeros(3, dtype=torch.int32)
    o = torch.empty(2, num_heads, head_dim_v, dtype=dtype)
    lse = torch.empty(2, num_heads, dtype=torch.float32)
    grid, args, meta = ops.merge_launch_args(
        o_parts, lse_parts, seg[:-1], seg[1:], o, lse, min_parts=min_parts
    )
    return name, _merge_states_kernel, args, meta


def prefix_case(name, *, num_heads, num_kv_heads, head_dim, head_dim_v, dtype, kv_dtype=None,
                mla=False, scales=None):
    kv_dtype = kv_dtype or dtype
    q = torch.empty(4, num_heads, head_dim, dtype=dtype)
    k = torch.empty(64, num_kv_heads, head_dim, dtype=kv_dtype)
    v = k[..., :head_dim_v] if mla else torch.empty(64, num_kv_heads, head_dim_v, dtype=kv_dtype)
    tiles = torch.zeros(1, 5, dtype=torch.int32)
    indices = torch.zeros(0, dtype=torch.int64)
    o = torch.empty(4, num_heads, head_dim_v, dtype=dtype)
    lse = torch.empty(4, num_heads, dtype=torch.float32)
    ks = vs = None
    if scales == "tensor":
        ks = vs = torch.ones(1)
    elif scales == "float":
        ks, vs = 0.5, 2.0
    grid, args, meta = prefix_launch_args(q, k, v, tiles, indices, head_dim**-0.5, max_rows=64,
                                          k_scale=ks, v_scale=vs, o=o, lse=lse)
    return name, _prefix_attn_kernel, args, meta


CASES = [
    decode_case("gqa8 bf16 d128", num_heads=64, num_kv_heads=8, head_dim=128, head_dim_v=128,
                dtype=torch.bfloat16),
    decode_case("gqa4 fp16 d96 forced", num_heads=8, num_kv_heads=2, head_dim=96, head_dim_v=96,
                dtype=torch.float16, num_kv_splits=4),
    decode_case("mha fp16 d64", num_heads=8, num_kv_heads=8, head_dim=64, head_dim_v=64,
                dtype=torch.float16),
    decode_case("mha fp32 d128", num_heads=4, num_kv_heads=4, head_dim=128, head_dim_v=128,
                dtype=torch.float32),
    decode_case("gqa16 fp32 d128", num_heads=32, num_kv_heads=2, head_dim=128, head_dim_v=128,
                dtype=torch.float32),
    decode_case("mla128 bf16", num_heads=128, num_kv_heads=1, head_dim=576, head_dim_v=512,
                dtype=torch.bfloat16, mla=True),
    decode_case("mla16 bf16 fp8-kv", num_heads=16, num_kv_heads=1, head_dim=576, head_dim_v=512,
                dtype=torch.bfloat16, kv_dtype=torch.float8_e4m3fn, mla=True, scales=True),
    decode_case("gqa8 bf16 fp8-kv", num_heads=64, num_kv_heads=8, head_dim=128, head_dim_v=128,
                dtype=torch.bfloat16, kv_dtype=torch.float8_e4m3fn, scales=True),
    prefix_case("prefix gqa8 bf16 d128", num_heads=64, num_kv_heads=8, head_dim=128,
                head_dim_v=128, dtype=torch.bfloat16),
    prefix_case("prefix gqa1 fp16 d128", num_heads=8, num_kv_heads=8, head_dim=128,
                head_dim_v=128, dtype=torch.float16),
    prefix_case("prefix gqa4 fp32 d64", num_heads=16, num_kv_heads=4, head_dim=64,
                head_dim_v=64, dtype=torch.float32),
    prefix_case("prefix gqa8 bf16 fp8-kv float scales", num_heads=64, num_kv_heads=8,
                head_dim=128, head_dim_v=128, dtype=torch.bfloat16,
                kv_dtype=torch.float8_e4m3fn, scales="float"),
    prefix_case("prefix mla h128 bf16", num_heads=128, num_kv_heads=1, head_dim=576,
                head_dim_v=512, dtype=torch.bfloat16, mla=True),
    prefix_case("prefix mla h16 bf16 fp8-kv tensor scales", num_heads=16, num_kv_heads=1,
                head_dim=576, head_dim_v=512, dtype=torch.bfloat16,
                kv_dtype=torch.float8_e4m3fn, mla=True, scales="tensor"),
    merge_case("merge bf16 dv128", num_heads=64, head_dim_v=128, dtype=torch.bfloat16, min_parts=0),
    merge_case("merge fp32 dv512 stage2", num_heads=128, head_dim_v=512, dtype=torch.float32,
               min_parts=2),
]


def main() -> int:
    failed = 0
    for name, kernel, args, meta in CASES:
        try:
            compiled = compile_sm90(kernel, args, meta)
            ptx = compiled.asm["ptx"]
            print(f"ok   {name}: {len(compiled.asm['cubin'])} B cubin, "
                  f"{ptx.count('mma.sync') + ptx.count('wgmma')} mma, shared {compiled.metadata.shared} B")
        except Exception as exc:  # report every variant, then fail
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
