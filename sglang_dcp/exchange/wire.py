"""Bytes the per-layer exchange moves per guest item (one query row served on another rank).

A guest item costs, per layer, the query out and the partial back::

    q  [num_q_heads, head_dim]    activation dtype (bf16: 2 B)
    o  [num_q_heads, v_head_dim]  activation dtype
    lse [num_q_heads]             fp32 (4 B)

(the per-peer 16-byte headers of ``buffers.py`` are per message, not per item). The KV cache
dtype does not enter: FP8 KV changes what each rank reads, not what travels.

- GQA: ``head_dim = v_head_dim`` = the model's head dim (Qwen3-235B: 64 query heads x 128).
- MLA (SGLang's absorbed path): ``head_dim = kv_lora_rank + qk_rope_head_dim``,
  ``v_head_dim = kv_lora_rank`` (DeepSeek-V3: 128 heads x 576 out, 512 back).

The shipped cost profiles (``sglang_dcp/profiles``) derive ``exchange_us_per_item`` from these
byte counts (``test/unit/test_exchange_bytes.py`` checks each one). Pure Python.
"""

from __future__ import annotations

LSE_BYTES = 4  # fp32


def item_bytes(*, num_q_heads: int, head_dim: int, v_head_dim: int, elem_bytes: int = 2) -> int:
    """Bytes per guest item per layer: q out + (o, lse) back."""
    return num_q_heads * ((head_dim + v_head_dim) * elem_bytes + LSE_BYTES)


def mla_item_bytes(
    num_q_heads: int, *, kv_lora_rank: int = 512, qk_rope_head_dim: int = 64, elem_bytes: int = 2
) -> int:
    """``item_bytes`` of MLA's absorbed exchange (defaults: DeepSeek-V3 / Kimi-K2 latent)."""
    return item_bytes(
        num_q_heads=num_q_heads, head_dim=kv_lora_rank + qk_rope_head_dim,
        v_head_dim=kv_lora_rank, elem_bytes=elem_bytes,
    )  # fmt: skip


def gqa_item_bytes(num_q_heads: int, head_dim: int, *, elem_bytes: int = 2) -> int:
    """``item_bytes`` of GQA/MHA (per-head K and V of ``head_dim``)."""
    return item_bytes(
        num_q_heads=num_q_heads, head_dim=head_dim, v_head_dim=head_dim, elem_bytes=elem_bytes
    )
