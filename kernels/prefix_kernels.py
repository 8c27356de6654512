"""Triton kernel for prefix attention over row tiles (jit code only; launcher in ``prefix_ops.py``).

A *tile* is a run of consecutive query rows of one request that attend to the same KV span (a
list of slot ids). Prefill over shards (``exchange/extend.py``) has two kinds:

- a guest tile: up to ``T`` rows of a chunk against the part of the request's prompt this rank
  holds, **non-causal** (every shard token precedes the chunk);
- the home tile: the chunk's rows against the home's own prefix tokens followed by the chunk,
  **causal with an offset** (row ``r`` of the tile sees the first ``kv_seen0 + r`` positions).

Each program computes ``BLOCK_R`` rows x ``BLOCK_H`` query heads of one KV head (GQA heads of a
group share the K/V tiles; MLA: one latent head, every query head in the group) with an online
softmax (Milakov & Gimelshein, arXiv 1805.02867) in base 2, and writes the normalised ``o`` and the
natural-log LSE of each (row, head). So a tile's KV span is read once per program, not once per
row as a decode item per row would::

    tiles  [q_start, q_rows, kv_start, kv_len, kv_seen0]  one int32 row each   <- program axis 0
    row blocks of BLOCK_R rows inside the tile (past q_rows: exit)             <- program axis 1
    KV head x head tile                                                         <- program axis 2
"""

import triton
import triton.language as tl

from .decode_kernels import _pv_tile, _qk_tile
from .merge_kernels import _finalize_state

TILE_FIELDS = 5  # q_start, q_rows, kv_start, kv_len, kv_seen0


@triton.jit
def _prefix_attn_kernel(
    Q,  # [num_rows, num_heads, head_dim]
    K,  # [num_slots, num_kv_heads, head_dim]
    V,  # [num_slots, num_kv_heads, head_dim_v] (unused when V_FROM_K)
    TILES,  # [num_tiles, 5] int32
    KV_INDICES,  # [nnz] int32/int64
    K_SCALE,  # [1] fp32 or None (a float scale is folded into qk_scale_log2)
    V_SCALE,  # [1] fp32 or None (a float scale is v_mul)
    O,  # [num_rows, num_heads, head_dim_v] q dtype
    LSE,  # [num_rows, num_heads] fp32, natural log
    qk_scale_log2,  # sm_scale * log2(e) (* k_scale when given as a float)
    v_mul,  # v_scale when given as a float, else 1.0
    stride_qn,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_on,
    stride_oh,
    stride_ln,
    stride_lh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DPE: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    V_FROM_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    tile = tl.program_id(0)
    r0 = tl.program_id(1) * BLOCK_R
    head_tiles: tl.constexpr = (GROUP + BLOCK_H - 1) // BLOCK_H
    kv_head = tl.program_id(2) // head_tiles
    h0 = (tl.program_id(2) % head_tiles) * BLOCK_H
    meta = TILES + tile * 5
    q_start = tl.load(meta).to(tl.int64)
    q_rows = tl.load(meta + 1)
    kv_start = tl.load(meta + 2).to(tl.int64)
    kv_len = tl.load(meta + 3)
    seen0 = tl.load(meta + 4)
    if r0 < q_rows:
        M: tl.constexpr = BLOCK_R * BLOCK_H
        offs_m = tl.arange(0, M)
        row = r0 + offs_m // BLOCK_H  # (row, head) pairs, heads fastest
        h_in = h0 + offs_m % BLOCK_H
        mask_m = (row < q_rows) & (h_in < GROUP)
        head = kv_head * GROUP + h_in
        # causal with an offset: row r sees the first min(kv_len, seen0 + r) positions
        seen = tl.minimum(seen0 + row, kv_len)
        last = tl.minimum(r0 + BLOCK_R, q_rows) - 1
        kv_end = tl.maximum(tl.minimum(seen0 + last, kv_len), 0)

        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_dv = offs_dv < HEAD_DIM_V
        q_row = (q_start + row.to(tl.int64)) * stride_qn + head * stride_qh
        q = tl.load(Q + q_row[:, None] + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # fmt: skip
        if BLOCK_DPE > 0:
            offs_pe = BLOCK_D + tl.arange(0, BLOCK_DPE)
            mask_pe = offs_pe < HEAD_DIM
            q_pe = tl.load(Q + q_row[:, None] + offs_pe[None, :],
                           mask=mask_m[:, None] & mask_pe[None, :], other=0.0)  # fmt: skip
        qk_scale = qk_scale_log2
        if K_SCALE is not None:
            qk_scale = qk_scale * tl.load(K_SCALE)

        k_base = K + kv_head * stride_kh
        v_base = V + kv_head * stride_vh
        idx_base = KV_INDICES + kv_start
        m = tl.full([M], float("-inf"), tl.float32)
        l = tl.zeros([M], tl.float32)
        acc = tl.zeros([M, BLOCK_DV], tl.float32)
        for n0 in range(0, kv_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < kv_end
            slot = tl.load(idx_base + offs_n, mask=mask_n, other=0).to(tl.int64)
            k = tl.load(k_base + slot[None, :] * stride_kt + offs_d[:, None],
                        mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # fmt: skip
            qk = _qk_tile(q, k, True, DOT_FP32)
            if BLOCK_DPE > 0:
                k_pe = tl.load(k_base + slot[None, :] * stride_kt + offs_pe[:, None],
                               mask=mask_n[None, :] & mask_pe[:, None], other=0.0)  # fmt: skip
                qk += _qk_tile(q_pe, k_pe, True, DOT_FP32)
            visible = offs_n[None, :] < seen[:, None]
            qk = tl.where(visible, qk * qk_scale, float("-inf"))
            if V_FROM_K:
                v = tl.trans(k)
            else:
                v = tl.load(v_base + slot[:, None] * stride_vt + offs_dv[None, :],
                            mask=mask_n[:, None] & mask_dv[None, :], other=0.0)  # fmt: skip
            m_new = tl.maximum(m, tl.max(qk, 1))
            # a row that has seen nothing yet keeps m = -inf: subtract 0 instead (no NaN)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m - m_safe)
            p = tl.exp2(qk - m_safe[:, None])
            l = l * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _pv_tile(p, v, q, True, DOT_FP32)
            m = m_new

        out, lse = _finalize_state(m, l, acc)
        if V_SCALE is not None:
            out = out * tl.load(V_SCALE)
        out = out * v_mul
        o_row = (q_start + row.to(tl.int64)) * stride_on + head * stride_oh
        tl.store(O + o_row[:, None] + offs_dv[None, :], out.to(O.dtype.element_ty),
                 mask=mask_m[:, None] & mask_dv[None, :])  # fmt: skip
        l_row = (q_start + row.to(tl.int64)) * stride_ln + head * stride_lh
        tl.store(LSE + l_row, lse, mask=mask_m)
