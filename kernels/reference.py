"""Torch references for the decode-attention and merge ops.

Same signatures and conventions as the Triton ops; used on CPU in production paths (dispatch
``impl="torch"``) and, with ``compute_dtype=torch.float64``, as test oracles. No Triton import.
"""

from __future__ import annotations

import math

import torch

def _scale_value(scale) -> float | torch.Tensor:
    if scale is None:
        return 1.0
    if isinstance(scale, torch.Tensor):
        return scale.reshape(()).to(torch.float64)
    return float(scale)


def decode_attention_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    *,
    num_kv_splits: int | None = None,
    k_scale=None,
    v_scale=None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention of each item over its slot list, computed item by item.

    q: [num_items, num_heads, head_dim]; k_buffer: [num_slots, num_kv_heads, head_dim];
    v_buffer: [num_slots, num_kv_heads, head_dim_v] (may view k_buffer); kv_indptr:
    [num_items + 1]; kv_indices: [nnz]. FP8 buffers are dequantised as ``k * k_scale``,
    ``v * v_scale``. ``num_kv_splits`` is accepted for signature parity and ignored (the result
    does not depend on it). Returns o: [num_items, num_heads, head_dim_v] q.dtype and
    lse: [num_items, num_heads] fp32, natural log; an item with no KV gives o = 0, lse = -inf.
    """
    del num_kv_splits
    num_items, num_heads, _ = q.shape
    num_kv_heads, head_dim_v = k_buffer.shape[1], v_buffer.shape[2]
    group = num_heads // num_kv_heads
    ks, vs = _scale_value(k_scale), _scale_value(v_scale)
    o = torch.zeros(num_items, num_heads, head_dim_v, dtype=compute_dtype, device=q.device)
    lse = torch.full((num_items, num_heads), -math.inf, dtype=compute_dtype, device=q.device)
    bounds = kv_indptr.tolist()
    for i in range(num_items):
        if bounds[i + 1] <= bounds[i]:
            continue
        slots = kv_indices[bounds[i] : bounds[i + 1]].long()
        k = k_buffer[slots].to(compute_dtype) * ks  # [len, num_kv_heads, head_dim]
        v = v_buffer[slots].to(compute_dtype) * vs
        qi = q[i].to(compute_dtype).view(num_kv_heads, group, -1)
        scores = torch.einsum("hgd,lhd->hgl", qi, k) * sm_scale
        lse_i = torch.logsumexp(scores, dim=-1)  # [num_kv_heads, group]
        probs = torch.exp(scores - lse_i[..., None])
        o[i] = torch.einsum("hgl,lhd->hgd", probs, v).reshape(num_heads, head_dim_v)
        lse[i] = lse_i.reshape(num_heads)
    return o.to(q.dtype), lse.to(torch.float32)


def merge_attention_states_ref(
    o_parts: torch.Tensor,
    lse_parts: torch.Tensor,
    seg_indptr: torch.Tensor,
    *,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention states by LSE, one output row per segment.

    o_parts: [num_parts, num_heads, head_dim_v]; lse_parts: [num_parts, num_heads] fp32, natural
    log; seg_indptr: [num_rows + 1], row j merges parts seg_indptr[j]:seg_indptr[j+1]. -inf parts
    contribute nothing; a row with no finite part gives o = 0, lse = -inf.
    Returns o: [num_rows, num_heads, head_dim_v] o_parts.dtype, lse: [num_rows, num_heads] fp32.
    """
    num_rows = seg_indptr.numel() - 1
    _, num_heads, head_dim_v = o_parts.shape
    device = o_parts.device
    bounds = seg_indptr.to(device=device, dtype=torch.long)
    counts = bounds[1:] - bounds[:-1]
    part_rows = torch.repeat_interleave(torch.arange(num_rows, device=device), counts)
    first = int(bounds[0]) if num_rows > 0 else 0
    parts = slice(first, first + part_rows.numel())
    lse = lse_parts[parts].to(compute_dtype)
    o = o_parts[parts].to(compute_dtype)

    m = torch.full((num_rows, num_heads), -math.inf, dtype=compute_dtype, device=device)
    m = m.scatter_reduce(0, part_rows[:, None].expand_as(lse), lse, "amax")
    m_safe = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
    live = lse > -math.inf
    w = torch.where(live, torch.exp(lse - m_safe[part_rows]), torch.zeros_like(lse))
    d = torch.zeros_like(m).index_add_(0, part_rows, w)
    contrib = torch.where(live[..., None], w[..., None] * o, torch.zeros_like(o))
    acc = torch.zeros(num_rows, num_heads, head_dim_v, dtype=compute_dtype, device=device)
    acc.index_add_(0, part_rows, contrib)
    nonempty = d > 0
    d_safe = torch.where(nonempty, d, torch.ones_like(d))
    out = acc / d_safe[..., None]
    lse_out = torch.where(nonempty, m_safe + torch.log(d_safe), torch.full_like(d, -math.inf))
    return out.to(o_parts.dtype), lse_out.to(torch.float32)


def prefix_attention_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    tiles: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    *,
    k_scale=None,
    v_scale=None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix attention of row tiles (``prefix_ops.prefix_attention``), tile by tile.

    q: [num_rows, num_heads, head_dim]; tiles: [num_tiles, 5] ``(q_start, q_rows, kv_start,
    kv_len, kv_seen0)``: row r of a tile sees the first ``min(kv_len, kv_seen0 + r)`` slots of
    ``kv_indices[kv_start : kv_start + kv_len]``. Writes into ``out = (o [num_rows, num_heads,
    head_dim_v] q.dtype, lse [num_rows, num_heads] fp32)`` when given (other rows untouched),
    else into fresh zero/-inf tensors. A row seeing no KV gives o = 0, lse = -inf.
    """
    num_rows, num_heads, _ = q.shape
    num_kv_heads, head_dim_v = k_buffer.shape[1], v_buffer.shape[2]
    group = num_heads // num_kv_heads
    ks, vs = _scale_value(k_scale), _scale_value(v_scale)
    if out is None:
        out = (torch.zeros(num_rows, num_heads, head_dim_v, dtype=q.dtype, device=q.device),
               torch.full((num_rows, num_heads), -math.inf, device=q.device))  # fmt: skip
    o, lse = out
    for q0, rows, a, n, seen0 in tiles.tolist():
        if rows == 0:
            continue
        slots = kv_indices[a : a + n].long()
        k = k_buffer[slots].to(compute_dtype) * ks  # [n, num_kv_heads, head_dim]
        v = v_buffer[slots].to(compute_dtype) * vs
        qt = q[q0 : q0 + rows].to(compute_dtype).view(rows, num_kv_heads, group, -1)
        scores = torch.einsum("rhgd,lhd->rhgl", qt, k) * sm_scale
        seen = (seen0 + torch.arange(rows, device=q.device)).clamp(max=n)
        hidden = torch.arange(n, device=q.device)[None, :] >= seen[:, None]  # [rows, n]
        scores = scores.masked_fill(hidden[:, None, None, :], -math.inf)
        lse_t = torch.logsumexp(scores, dim=-1)  # [rows, num_kv_heads, group]
        live = torch.isfinite(lse_t)
        probs = torch.where(live[..., None], torch.exp(scores - lse_t[..., None]), 0.0)
        ot = torch.einsum("rhgl,lhd->rhgd", probs, v).reshape(rows, num_heads, head_dim_v)
        o[q0 : q0 + rows] = ot.to(o.dtype)
        lse[q0 : q0 + rows] = lse_t.reshape(rows, num_heads).to(torch.float32)
    return o, lse
