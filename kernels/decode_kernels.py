"""Triton kernels for split-KV decode attention (jit code only; launchers live in ``ops.py``).

Flash-decoding (Dao et al., "Flash-Decoding for long-context inference", 2023; the LightLLM /
SGLang stage-1/stage-2 layout): each item's key list is cut into chunks, every (head tile, chunk)
program runs an online softmax (Milakov & Gimelshein, arXiv 1805.02867) over its chunk and writes a
partial state, and stage 2 (``merge_kernels._merge_states_kernel``) merges them by LSE.

Unlike SGLang's kernel, the chunk length is **uniform across items** and the grid is a flat list of
chunk slots: ``rows = num_items + target_chunks`` bounds the number of chunks whatever the
length mix, so one long item among many short ones is cut into as many chunks as it needs to fill
the GPU while short items keep one chunk each. Each program finds its (item, split) from
``kv_indptr`` on the device, so nothing is read back to the host (CUDA-graph safe)::

    item lengths      [ 1k ][ 1k ][ ........ 128k ........ ][ 1k ]
    chunks (len c)    [ 0  ][ 1  ][ 2 ][ 3 ][ ...  ][ k+1  ][ k+2 ]   <- program axis 1
    head tiles        one KV head (group of query heads) per tile     <- program axis 0

An item cut into one chunk is finished by stage 1 (final ``o`` in the output dtype, final
``lse``); only items with >= 2 chunks go through the fp32 partial buffer and stage 2.
"""

import triton
import triton.language as tl

from .merge_kernels import _finalize_state


@triton.jit
def _find_chunk(
    KV_INDPTR,  # [num_items + 1] int
    num_items,
    chunk_id,
    min_chunk,
    target_chunks,
    max_splits,
    AUTO_SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """Map a flat chunk slot to its item. Item i is cut into ``count_i = max(1, cdiv(len_i, c_i))``
    chunks of ``c_i = roundup(max(floor, cdiv(len_i, max_splits)), BLOCK_N)`` tokens, where
    ``floor = max(min_chunk, cdiv(total_len, target_chunks))`` in auto mode (so the total is at most
    ``num_items + target_chunks``) and ``min_chunk`` when the split count is forced.
    Returns item = -1 for slots past the last chunk."""
    first = tl.load(KV_INDPTR).to(tl.int64)
    last = tl.load(KV_INDPTR + num_items).to(tl.int64)
    if AUTO_SPLIT:
        chunk_floor = tl.maximum(tl.cdiv(last - first, target_chunks), min_chunk)
    else:
        chunk_floor = last * 0 + min_chunk
    zero = tl.full([], 0, tl.int64)
    item = zero - 1
    row0 = zero
    count = zero
    chunk_len = zero
    kv_begin = zero
    kv_len = zero
    done = zero
    for b in range(0, num_items, BLOCK_I):
        idx = b + tl.arange(0, BLOCK_I)
        valid = idx < num_items
        lo = tl.load(KV_INDPTR + idx, mask=valid, other=0).to(tl.int64)
        hi = tl.load(KV_INDPTR + idx + 1, mask=valid, other=0).to(tl.int64)
        length = hi - lo
        clen = tl.maximum(tl.cdiv(length, max_splits), chunk_floor)
        clen = tl.cdiv(clen, BLOCK_N) * BLOCK_N
        cnt = tl.where(valid, tl.maximum(tl.cdiv(length, clen), 1), 0)
        incl = tl.cumsum(cnt, 0) + done
        excl = incl - cnt
        hit = valid & (excl <= chunk_id) & (chunk_id < incl)
        item += tl.sum(tl.where(hit, idx.to(tl.int64) + 1, 0), 0)
        row0 += tl.sum(tl.where(hit, excl, 0), 0)
        count += tl.sum(tl.where(hit, cnt, 0), 0)
        chunk_len += tl.sum(tl.where(hit, clen, 0), 0)
        kv_begin += tl.sum(tl.where(hit, lo, 0), 0)
        kv_len += tl.sum(tl.where(hit, length, 0), 0)
        done += tl.sum(cnt, 0)
    return item, chunk_id - row0, row0, count, chunk_len, kv_begin, kv_len


@triton.jit
def _qk_tile(q, k, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr):
    """q: [BLOCK_H, BLOCK_D], k: [BLOCK_D, BLOCK_N] -> scores [BLOCK_H, BLOCK_N] fp32."""
    if USE_DOT:
        if DOT_FP32:
            # the interpreter multiplies bf16 bit patterns as integers, and fp32 inputs must not
            # silently drop to tf32 on the GPU
            s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee")
        else:
            s = tl.dot(q, k.to(q.dtype))
    else:
        s = tl.sum(q.to(tl.float32)[:, :, None] * k.to(tl.float32)[None, :, :], 1)
    return s


@triton.jit
def _pv_tile(p, v, q, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr):
    """p: [BLOCK_H, BLOCK_N] fp32, v: [BLOCK_N, BLOCK_DV] -> [BLOCK_H, BLOCK_DV] fp32."""
    if USE_DOT:
        if DOT_FP32:
            r = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            r = tl.dot(p.to(q.dtype), v.to(q.dtype))
    else:
        r = tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], 1)
    return r


@triton.jit
def _decode_split_kernel(
    Q,  # [num_items, num_heads, head_dim]
    K,  # [num_slots, num_kv_heads, head_dim]
    V,  # [num_slots, num_kv_heads, head_dim_v] (unused when V_FROM_K)
    KV_INDPTR,  # [num_items + 1] int32/int64
    KV_INDICES,  # [nnz] int32/int64
    K_SCALE,  # [1] fp32 or None
    V_SCALE,  # [1] fp32 or None
    O_PART,  # [rows, num_heads, head_dim_v] fp32: partials of items cut into >= 2 chunks
    LSE_PART,  # [rows, num_heads] fp32, natural log
    O,  # [num_items, num_heads, head_dim_v] q dtype: items finished in one chunk
    LSE,  # [num_items, num_heads] fp32, natural log
    SEG,  # [2, num_items] int32: partial rows [SEG[0, i], SEG[1, i]) of item i
    sm_scale_log2,  # sm_scale * log2(e)
    num_items,
    min_chunk,
    target_chunks,
    max_splits,
    stride_qn,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_pr,
    stride_ph,
    stride_lr,
    stride_lh,
    stride_on,
    stride_oh,
    stride_ln,
    stride_lnh,
    GROUP: tl.constexpr,  # query heads per KV head
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,  # main part of head_dim (power of 2)
    BLOCK_DPE: tl.constexpr,  # rest of head_dim (MLA rope part, D=96 -> 64 + 32); 0 if none
    BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_I: tl.constexpr,
    AUTO_SPLIT: tl.constexpr,
    USE_DOT: tl.constexpr,  # tensor-core tiles (GQA/MLA); per-head reductions for small groups
    DOT_FP32: tl.constexpr,  # fp32 dot operands: fp32 inputs, or bf16 under the interpreter
    V_FROM_K: tl.constexpr,  # MLA: V is the first head_dim_v columns of K, reuse the K tile
):
    tl.static_assert(BLOCK_H * ((GROUP + BLOCK_H - 1) // BLOCK_H) >= GROUP)
    tl.static_assert((not V_FROM_K) or (BLOCK_DV == BLOCK_D))
    TILES_PER_KV: tl.constexpr = (GROUP + BLOCK_H - 1) // BLOCK_H
    tile = tl.program_id(0)
    chunk_id = tl.program_id(1)
    kv_head = tile // TILES_PER_KV
    h_in_group = (tile % TILES_PER_KV) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = h_in_group < GROUP
    heads = kv_head * GROUP + h_in_group

    item, split, row0, count, chunk_len, kv_begin, kv_len = _find_chunk(
        KV_INDPTR,
        num_items,
        chunk_id,
        min_chunk,
        target_chunks,
        max_splits,
        AUTO_SPLIT,
        BLOCK_N,
        BLOCK_I,
    )
    if item >= 0:
        start = split * chunk_len
        end = tl.minimum(start + chunk_len, kv_len)

        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_dv = offs_dv < HEAD_DIM_V
        q_base = Q + item * stride_qn + heads[:, None] * stride_qh
        q = tl.load(q_base + offs_d[None, :], mask=mask_h[:, None] & mask_d[None, :], other=0.0)
        if BLOCK_DPE > 0:
            offs_pe = BLOCK_D + tl.arange(0, BLOCK_DPE)
            mask_pe = offs_pe < HEAD_DIM
            q_pe = tl.load(
                q_base + offs_pe[None, :], mask=mask_h[:, None] & mask_pe[None, :], other=0.0
            )
        qk_scale = sm_scale_log2
        if K_SCALE is not None:
            qk_scale = qk_scale * tl.load(K_SCALE)

        k_base = K + kv_head * stride_kh
        v_base = V + kv_head * stride_vh
        idx_base = KV_INDICES + kv_begin
        m = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < end
            slot = tl.load(idx_base + offs_n, mask=mask_n, other=0).to(tl.int64)
            k = tl.load(
                k_base + slot[None, :] * stride_kt + offs_d[:, None],
                mask=mask_n[None, :] & mask_d[:, None],
                other=0.0,
            )
            qk = _qk_tile(q, k, USE_DOT, DOT_FP32)
            if BLOCK_DPE > 0:
                k_pe = tl.load(
                    k_base + slot[None, :] * stride_kt + offs_pe[:, None],
                    mask=mask_n[None, :] & mask_pe[:, None],
                    other=0.0,
                )
                qk += _qk_tile(q_pe, k_pe, USE_DOT, DOT_FP32)
            # base-2 scores: exp2 is one instruction, and log2(e) is folded into the scale
            qk = tl.where(mask_n[None, :], qk * qk_scale, float("-inf"))
            if V_FROM_K:
                v = tl.trans(k)
            else:
                v = tl.load(
                    v_base + slot[:, None] * stride_vt + offs_dv[None, :],
                    mask=mask_n[:, None] & mask_dv[None, :],
                    other=0.0,
                )
            m_new = tl.maximum(m, tl.max(qk, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _pv_tile(p, v, q, USE_DOT, DOT_FP32)
            m = m_new

        out, lse = _finalize_state(m, l, acc)
        if V_SCALE is not None:
            out = out * tl.load(V_SCALE)
        mask_o = mask_h[:, None] & mask_dv[None, :]
        if count == 1:
            tl.store(
                O + item * stride_on + heads[:, None] * stride_oh + offs_dv[None, :],
                out.to(O.dtype.element_ty),
                mask=mask_o,
            )
            tl.store(LSE + item * stride_ln + heads * stride_lnh, lse, mask=mask_h)
        else:
            row = row0 + split
            tl.store(
                O_PART + row * stride_pr + heads[:, None] * stride_ph + offs_dv[None, :],
                out,
                mask=mask_o,
            )
            tl.store(LSE_PART + row * stride_lr + heads * stride_lh, lse, mask=mask_h)
        if (split == 0) & (tile == 0):
            tl.store(SEG + item, row0.to(tl.int32))
            tl.store(SEG + num_items + item, (row0 + count).to(tl.int32))
