"""Input checks for the kernel ops, run before any launch.

Shape, dtype and device checks are free and always run. Data checks (``kv_indptr`` monotonic,
slot indices in range) read the tensors, which costs a device sync on a GPU and cannot run inside
CUDA-graph capture, so they run by default only for CPU tensors, where the Triton interpreter
would otherwise read or write out of bounds and crash the process.
"""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = (torch.float8_e4m3fn,)
INDEX_DTYPES = (torch.int32, torch.int64)


def _fail(name: str, msg: str):
    raise ValueError(f"{name}: {msg}")


def _tensor(name: str, t, ndim: int, dtypes: tuple, device: torch.device | None):
    if not isinstance(t, torch.Tensor):
        _fail(name, f"expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        _fail(name, f"expected {ndim} dims, got shape {list(t.shape)}")
    if t.dtype not in dtypes:
        _fail(name, f"dtype {t.dtype} not supported (expected one of {list(dtypes)})")
    if device is not None and t.device != device:
        _fail(name, f"on {t.device}, but q/o_parts is on {device}")


def _scale(name: str, s, device: torch.device):
    if s is None:
        return
    if isinstance(s, torch.Tensor):
        if s.numel() != 1 or not s.is_floating_point():
            _fail(name, f"expected a float or a 1-element float tensor, got shape {list(s.shape)}")
        if s.device != device:
            _fail(name, f"on {s.device}, but q is on {device}")
    elif not isinstance(s, numbers.Real) or not math.isfinite(float(s)):
        _fail(name, f"expected a finite float or a 1-element tensor, got {s!r}")


def _check_indptr(name: str, indptr: torch.Tensor, limit: int, limit_name: str):
    ptr = indptr.detach().to("cpu", torch.int64)
    if ptr.numel() and int(ptr[0]) < 0:
        _fail(name, f"first entry {int(ptr[0])} is negative")
    if ptr.numel() > 1 and bool((ptr[1:] < ptr[:-1]).any()):
        bad = int(torch.nonzero(ptr[1:] < ptr[:-1])[0])
        _fail(name, f"must be non-decreasing (entry {bad + 1} < entry {bad})")
    if ptr.numel() and int(ptr[-1]) > limit:
        _fail(name, f"last entry {int(ptr[-1])} exceeds {limit_name} ({limit})")
    return ptr


def check_attention_inputs(q, k_buffer, v_buffer, sm_scale, *, k_scale, v_scale,
                           indices: dict) -> None:  # fmt: skip
    """The checks every attention op here shares (``decode_attention``, ``prefix_attention``):
    ``q [n, H, D]`` float; ``k_buffer [slots, Hkv, D]`` and ``v_buffer [slots, Hkv, Dv]`` of q's
    dtype or FP8 e4m3, on q's device, ``H`` a multiple of ``Hkv``, last dims contiguous;
    ``indices``: name -> (tensor, ndim, dtypes), each on q's device; a finite ``sm_scale``; FP8
    scales (``_scale``)."""
    _tensor("q", q, 3, FLOAT_DTYPES, None)
    dev = q.device
    _tensor("k_buffer", k_buffer, 3, FLOAT_DTYPES + FP8_DTYPES, dev)
    _tensor("v_buffer", v_buffer, 3, FLOAT_DTYPES + FP8_DTYPES, dev)
    for name, (t, ndim, dtypes) in indices.items():
        _tensor(name, t, ndim, dtypes, dev)
    if k_buffer.dtype not in (q.dtype,) + FP8_DTYPES:
        _fail("k_buffer", f"dtype {k_buffer.dtype} must match q ({q.dtype}) or be FP8 e4m3")
    if v_buffer.dtype != k_buffer.dtype:
        _fail("v_buffer", f"dtype {v_buffer.dtype} must match k_buffer ({k_buffer.dtype})")
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_slots, num_kv_heads, _ = k_buffer.shape
    if k_buffer.shape[2] != head_dim:
        _fail("k_buffer", f"head_dim {k_buffer.shape[2]} != q head_dim {head_dim}")
    if tuple(v_buffer.shape[:2]) != (num_slots, num_kv_heads):
        _fail("v_buffer", f"shape {list(v_buffer.shape)} must start with {[num_slots, num_kv_heads]}")
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        _fail("k_buffer", f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    for name, t in (("q", q), ("k_buffer", k_buffer), ("v_buffer", v_buffer)):
        if t.numel() and t.stride(-1) != 1:
            _fail(name, f"last dim must be contiguous (stride {t.stride(-1)})")
    if not isinstance(sm_scale, numbers.Real) or not math.isfinite(float(sm_scale)):
        _fail("sm_scale", f"expected a finite float, got {sm_scale!r}")
    _scale("k_scale", k_scale, dev)
    _scale("v_scale", v_scale, dev)


def check_decode_inputs(
    q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale, *, num_kv_splits, k_scale, v_scale,
    validate: bool | None,
) -> None:
    """Raise ``ValueError`` naming the first bad argument of ``decode_attention``."""
    check_attention_inputs(q, k_buffer, v_buffer, sm_scale, k_scale=k_scale, v_scale=v_scale,
                           indices={"kv_indptr": (kv_indptr, 1, INDEX_DTYPES),
                                    "kv_indices": (kv_indices, 1, INDEX_DTYPES)})  # fmt: skip
    dev = q.device
    num_items = q.shape[0]
    num_slots = k_buffer.shape[0]
    if kv_indptr.numel() != num_items + 1:
        _fail("kv_indptr", f"has {kv_indptr.numel()} entries, expected num_items + 1 = {num_items + 1}")
    if num_kv_splits is not None and (
        not isinstance(num_kv_splits, numbers.Integral) or num_kv_splits < 1
    ):
        _fail("num_kv_splits", f"expected None or an int >= 1, got {num_kv_splits!r}")

    if validate is None:
        validate = dev.type == "cpu"
    if validate:
        ptr = _check_indptr("kv_indptr", kv_indptr, kv_indices.numel(), "kv_indices.numel()")
        used = kv_indices[int(ptr[0]) : int(ptr[-1])]
        if used.numel():
            lo, hi = int(used.min()), int(used.max())
            if lo < 0 or hi >= num_slots:
                _fail("kv_indices", f"slot {lo if lo < 0 else hi} out of range [0, {num_slots})")


def check_merge_inputs(o_parts, lse_parts, seg_indptr, *, validate: bool | None) -> None:
    """Raise ``ValueError`` naming the first bad argument of ``merge_attention_states``."""
    _tensor("o_parts", o_parts, 3, FLOAT_DTYPES, None)
    dev = o_parts.device
    _tensor("lse_parts", lse_parts, 2, (torch.float32,), dev)
    _tensor("seg_indptr", seg_indptr, 1, INDEX_DTYPES, dev)
    if tuple(lse_parts.shape) != tuple(o_parts.shape[:2]):
        _fail("lse_parts", f"shape {list(lse_parts.shape)} != o_parts[:2] {list(o_parts.shape[:2])}")
    if o_parts.numel() and o_parts.stride(-1) != 1:
        _fail("o_parts", f"last dim must be contiguous (stride {o_parts.stride(-1)})")
    if seg_indptr.numel() < 1:
        _fail("seg_indptr", "needs at least one entry (num_rows + 1)")
    if validate is None:
        validate = dev.type == "cpu"
    if validate:
        _check_indptr("seg_indptr", seg_indptr, o_parts.shape[0], "o_parts.shape[0]")
