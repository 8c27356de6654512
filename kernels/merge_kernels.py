"""Triton kernels for LSE merging (jit code only; launchers live in ``ops.py``).

Merging attention states (Juravsky et al., "Hydragen", arXiv 2402.05099, eq. 3; FlashInfer
"cascade"): partial results (o_i, lse_i) over disjoint key sets combine into
``lse = log sum_i exp(lse_i)`` and ``o = sum_i exp(lse_i - lse) * o_i``.
Inside the kernels the state is kept in base 2 (``m``: running max of lse * log2(e), ``d``: sum of
``2^(lse_i*log2e - m)``, ``acc``: the matching weighted sum of o_i), so one ``exp2`` per part.
"""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # 1 / ln(2): natural-log LSE -> base-2 exponent
LN2 = 0.6931471805599453


@triton.jit
def _merge_state(m, d, acc, lse2, o):
    """Fold one part (``lse2``: [BLOCK_H] base-2 LSE, ``o``: [BLOCK_H, BLOCK_DV] fp32) into the
    running state. -inf parts (empty key sets) add nothing, and their ``o`` is never read into
    the sum, so garbage there cannot leak in as NaN."""
    m_new = tl.maximum(m, lse2)
    # both -inf: keep the exponents finite-minus-finite so no NaN appears (and no numpy warning
    # under the interpreter)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_safe)
    w = tl.exp2(lse2 - m_safe)
    live = lse2 != float("-inf")
    acc = acc * alpha[:, None] + tl.where(live[:, None], w[:, None] * o, 0.0)
    d = d * alpha + tl.where(live, w, 0.0)
    return m_new, d, acc


@triton.jit
def _finalize_state(m, d, acc):
    """State -> (normalised o, natural-log lse); an empty state gives o = 0, lse = -inf."""
    nonempty = d > 0.0
    d_safe = tl.where(nonempty, d, 1.0)
    o = acc / d_safe[:, None]
    lse = tl.where(nonempty, (m + tl.log2(d_safe)) * 0.6931471805599453, float("-inf"))
    return o, lse


@triton.jit
def _merge_states_kernel(
    O_PARTS,  # [num_parts, num_heads, head_dim_v] any float dtype
    LSE_PARTS,  # [num_parts, num_heads] fp32, natural log
    SEG_START,  # [num_rows] int: first part of each output row
    SEG_END,  # [num_rows] int: one past its last part
    O,  # [num_rows, num_heads, head_dim_v] output dtype
    LSE,  # [num_rows, num_heads] fp32, natural log
    num_heads,
    stride_pp,
    stride_ph,
    stride_lp,
    stride_lh,
    stride_on,
    stride_oh,
    stride_ln,
    stride_lnh,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    MIN_PARTS: tl.constexpr,  # 0 normally; 2 in decode stage 2 (stage 1 wrote 0/1-part rows)
):
    row = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_h = heads < num_heads
    mask_o = mask_h[:, None] & (offs_dv[None, :] < HEAD_DIM_V)

    start = tl.load(SEG_START + row).to(tl.int64)
    end = tl.load(SEG_END + row).to(tl.int64)
    if end - start >= MIN_PARTS:
        m = tl.full([BLOCK_H], float("-inf"), tl.float32)
        d = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)
        for part in range(start, end):
            lse = tl.load(
                LSE_PARTS + part * stride_lp + heads * stride_lh, mask=mask_h, other=float("-inf")
            )
            o = tl.load(
                O_PARTS + part * stride_pp + heads[:, None] * stride_ph + offs_dv[None, :],
                mask=mask_o,
                other=0.0,
            )
            m, d, acc = _merge_state(m, d, acc, lse * 1.4426950408889634, o.to(tl.float32))
        out, lse_out = _finalize_state(m, d, acc)
        tl.store(
            O + row * stride_on + heads[:, None] * stride_oh + offs_dv[None, :],
            out.to(O.dtype.element_ty),
            mask=mask_o,
        )
        tl.store(LSE + row * stride_ln + heads * stride_lnh, lse_out, mask=mask_h)
