"""Launchers: checks, allocation, grid and launch of the Triton kernels (the tiling and the
split plan: ``tiling.py``).

``impl`` selects the implementation: ``"triton"``; ``"torch"`` (``reference.py``); or
``"auto"`` (default): Triton for CUDA tensors and for CPU tensors when the kernels were
decorated under ``TRITON_INTERPRET=1``, the torch reference for CPU tensors otherwise, so
production code on a CPU machine runs without the interpreter.
"""

from __future__ import annotations


import torch
import triton

from .checks import check_decode_inputs, check_merge_inputs
from .dispatch import IMPLS, _use_triton, kernels_interpreted  # noqa: F401 (package API)
from .decode_kernels import _decode_split_kernel
from .merge_kernels import LOG2E, _merge_states_kernel
from .reference import decode_attention_ref, merge_attention_states_ref
from .tiling import decode_config, split_plan

_SCALES: dict[tuple[float, torch.device], torch.Tensor] = {}


def _scale_arg(scale, device: torch.device) -> torch.Tensor | None:
    """An FP8 scale as the kernels take it: a ``[1]`` fp32 tensor on ``device``. Callers on a
    per-step path (the server) pass a tensor made once; a float is made into one once per value
    and kept (a host-to-device copy per call would break CUDA-graph capture)."""
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor):
        if scale.dtype != torch.float32 or scale.numel() != 1:
            raise ValueError(f"an FP8 scale tensor must be one fp32 element, got {scale.dtype} "
                             f"{list(scale.shape)}")  # fmt: skip
        return scale.reshape(1)
    if float(scale) == 1.0:
        return None
    key = (float(scale), torch.device(device))
    t = _SCALES.get(key)
    if t is None:
        t = _SCALES[key] = torch.tensor([key[0]], dtype=torch.float32, device=device)
    return t


def stage1_launch_args(
    q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale, *, o, lse, num_kv_splits, k_scale,
    v_scale,
):
    """(grid, positional args, constexprs + launch options, (o_part, lse_part, seg)) of the
    stage-1 launch; shared with the sm_90 compile check so it compiles exactly what runs."""
    num_items, num_heads, head_dim = q.shape
    num_kv_heads, head_dim_v = k_buffer.shape[1], v_buffer.shape[2]
    cfg = decode_config(q, k_buffer, v_buffer)
    plan = split_plan(
        num_items, cfg, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        head_dim_v=head_dim_v, kv_elem_bytes=k_buffer.element_size(), device=q.device,
        num_kv_splits=num_kv_splits,
    )
    o_part = torch.empty(plan.rows, num_heads, head_dim_v, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(plan.rows, num_heads, dtype=torch.float32, device=q.device)
    seg = torch.empty(2, num_items, dtype=torch.int32, device=q.device)
    args = (
        q, k_buffer, v_buffer, kv_indptr, kv_indices,
        _scale_arg(k_scale, q.device), _scale_arg(v_scale, q.device),
        o_part, lse_part, o, lse, seg,
        float(sm_scale) * LOG2E, num_items, plan.min_chunk, plan.target_chunks, plan.max_splits,
        *q.stride()[:2], *k_buffer.stride()[:2], *v_buffer.stride()[:2],
        *o_part.stride()[:2], *lse_part.stride(), *o.stride()[:2], *lse.stride(),
    )
    meta = dict(
        GROUP=cfg.group, HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_H=cfg.block_h,
        BLOCK_D=cfg.block_d, BLOCK_DPE=cfg.block_dpe, BLOCK_DV=cfg.block_dv, BLOCK_N=cfg.block_n,
        BLOCK_I=128, AUTO_SPLIT=plan.auto, USE_DOT=cfg.use_dot, DOT_FP32=cfg.dot_fp32,
        V_FROM_K=cfg.v_from_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    grid = (num_kv_heads * cfg.head_tiles_per_kv, plan.rows)
    return grid, args, meta, (o_part, lse_part, seg)


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    *,
    num_kv_splits: int | None = None,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
    impl: str = "auto",
    validate: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-KV decode attention with LSE output; one query row per attention item.

    Args:
        q: [num_items, num_heads, head_dim] fp16/bf16/fp32.
        k_buffer: [num_slots, num_kv_heads, head_dim], q.dtype or fp8 e4m3 (dequantised as
            ``k * k_scale``); num_heads % num_kv_heads == 0.
        v_buffer: [num_slots, num_kv_heads, head_dim_v], k_buffer.dtype; may be a view of
            k_buffer (MLA: num_kv_heads 1, head_dim 576, head_dim_v 512), then K tiles are reused.
        kv_indptr: [num_items + 1] int32/int64; item i attends to slots
            ``kv_indices[kv_indptr[i]:kv_indptr[i+1]]``.
        kv_indices: [nnz] int32/int64 slot ids, any order.
        sm_scale: softmax scale applied to q.k.
        num_kv_splits: force every item into this many chunks (None: heuristic, ``split_plan``).
        k_scale, v_scale: per-tensor FP8 scales (float or 1-element fp32 tensor on q's device).
        impl: "auto" | "triton" | "torch" (module docstring).
        validate: run the data checks of ``checks.py`` (default: only for CPU tensors).

    Returns:
        o: [num_items, num_heads, head_dim_v] q.dtype; lse: [num_items, num_heads] fp32, natural
        log. An item with no KV gives o = 0 and lse = -inf.

    >>> o, lse = decode_attention(q, k, v, indptr, indices, 1 / 128 ** 0.5)  # doctest: +SKIP
    """
    check_decode_inputs(
        q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale, num_kv_splits=num_kv_splits,
        k_scale=k_scale, v_scale=v_scale, validate=validate,
    )
    if not _use_triton(impl, q.device):
        return decode_attention_ref(
            q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale, k_scale=k_scale, v_scale=v_scale
        )
    num_items, num_heads, head_dim = q.shape
    head_dim_v = v_buffer.shape[2]
    o = torch.empty(num_items, num_heads, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(num_items, num_heads, dtype=torch.float32, device=q.device)
    if num_items == 0:
        return o, lse
    grid, args, meta, parts = stage1_launch_args(
        q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale, o=o, lse=lse,
        num_kv_splits=num_kv_splits, k_scale=k_scale, v_scale=v_scale,
    )
    _decode_split_kernel[grid](*args, **meta)
    o_part, lse_part, seg = parts
    _launch_merge(o_part, lse_part, seg[0], seg[1], o, lse, min_parts=2)
    return o, lse


def _merge_block_h(num_heads: int, block_dv: int) -> int:
    return max(1, min(triton.next_power_of_2(num_heads), 2048 // block_dv))


def merge_launch_args(o_parts, lse_parts, seg_start, seg_end, o, lse, *, min_parts: int):
    """(grid, positional args, constexprs + launch options) of the merge kernel."""
    num_rows, num_heads, head_dim_v = o.shape
    block_dv = triton.next_power_of_2(head_dim_v)
    block_h = _merge_block_h(num_heads, block_dv)
    grid = (num_rows, triton.cdiv(num_heads, block_h))
    args = (
        o_parts, lse_parts, seg_start, seg_end, o, lse, num_heads,
        *o_parts.stride()[:2], *lse_parts.stride(), *o.stride()[:2], *lse.stride(),
    )
    meta = dict(
        HEAD_DIM_V=head_dim_v, BLOCK_H=block_h, BLOCK_DV=block_dv, MIN_PARTS=min_parts,
        num_warps=4,
    )
    return grid, args, meta


def _launch_merge(o_parts, lse_parts, seg_start, seg_end, o, lse, *, min_parts: int) -> None:
    grid, args, meta = merge_launch_args(
        o_parts, lse_parts, seg_start, seg_end, o, lse, min_parts=min_parts
    )
    _merge_states_kernel[grid](*args, **meta)


def merge_attention_states(
    o_parts: torch.Tensor,
    lse_parts: torch.Tensor,
    seg_indptr: torch.Tensor,
    *,
    impl: str = "auto",
    validate: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention states by LSE (N-way, variable number of parts per row).

    Args:
        o_parts: [num_parts, num_heads, head_dim_v] fp16/bf16/fp32, each part normalised.
        lse_parts: [num_parts, num_heads] fp32, natural log; -inf marks an empty part, which
            contributes nothing (its o row is never read into the sum).
        seg_indptr: [num_rows + 1] int32/int64; row j merges parts
            ``seg_indptr[j]:seg_indptr[j+1]``.
        impl, validate: as for ``decode_attention``.

    Returns:
        o: [num_rows, num_heads, head_dim_v] o_parts.dtype; lse: [num_rows, num_heads] fp32,
        natural log. A row with no finite part (or none) gives o = 0, lse = -inf.
    """
    check_merge_inputs(o_parts, lse_parts, seg_indptr, validate=validate)
    if not _use_triton(impl, o_parts.device):
        return merge_attention_states_ref(o_parts, lse_parts, seg_indptr)
    num_rows = seg_indptr.numel() - 1
    _, num_heads, head_dim_v = o_parts.shape
    o = torch.empty(num_rows, num_heads, head_dim_v, dtype=o_parts.dtype, device=o_parts.device)
    lse = torch.empty(num_rows, num_heads, dtype=torch.float32, device=o_parts.device)
    if num_rows == 0 or num_heads == 0:
        return o, lse
    _launch_merge(o_parts, lse_parts, seg_indptr[:-1], seg_indptr[1:], o, lse, min_parts=0)
    return o, lse
