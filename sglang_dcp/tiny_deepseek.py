"""Write a deterministic random-weight DeepSeek-V3 checkpoint (MLA + grouped top-k MoE).

``python -m sglang_dcp.tiny_deepseek OUT_DIR [--seed N]``

The checkpoint has the real DeepSeek-V3 architecture (HF ``DeepseekV3ForCausalLM`` layout,
safetensors) at toy size, the config keys of the published ``config.json`` included
(``topk_method: noaux_tc``, ``scoring_func: sigmoid``, ``moe_layer_freq``):

- MLA with a q LoRA rank (48) and a KV LoRA rank (``kv_lora_rank`` 32), 4 heads, nope/rope
  head dims 16/16, V head dim 16, interleaved rope. SGLang's absorbed decode path therefore
  carries ``q [num_tokens, 4, 48]`` (32 latent + 16 rope columns) against one latent KV head
  ``[num_slots, 1, 48]`` whose first 32 columns are V. YaRN rope as published.
- 3 layers: the first dense (``first_k_dense_replace`` 1), then MoE layers with 8 routed
  experts in 4 groups (``n_group`` 4, ``topk_group`` 2, top-2, sigmoid scores with the
  ``e_score_correction_bias``) and one shared expert.

The tokenizer is the tiny Qwen3-MoE one (``tiny_model.build_tokenizer``). The same seed gives
byte-identical files.
"""

from __future__ import annotations

import os
import sys

from sglang_dcp.tiny_model import build_tokenizer, cli, random_weights, save

TINY_DEEPSEEK_CONFIG = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    moe_layer_freq=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=16,
    v_head_dim=16,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=4,
    topk_group=2,
    topk_method="noaux_tc",
    scoring_func="sigmoid",
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    rope_interleave=True,
    # YaRN like the published model (factor 40 from 4k there); SGLang 0.5.21's CPU rope supports
    # only this kind for DeepSeek (rotary_embedding/factory.py get_rope_cpu)
    rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=2048,
        beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
    ),
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    attention_bias=False,
    # Large init so logits are well separated (tiny_model.TINY_CONFIG says why).
    initializer_range=0.5,
)


def build(out_dir: str, seed: int = 0) -> str:
    """Write the checkpoint and tokenizer to ``out_dir``; returns ``out_dir``."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, TINY_DEEPSEEK_CONFIG["vocab_size"])
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = DeepseekV3Config(
        **TINY_DEEPSEEK_CONFIG, eos_token_id=eos, pad_token_id=eos, bos_token_id=None
    )
    config.dtype = "float32"

    gen = torch.Generator().manual_seed(seed)
    model = DeepseekV3ForCausalLM(config)
    random_weights(model, config.initializer_range, gen)
    with torch.no_grad():
        for name, b in sorted(model.named_buffers()):
            if name.endswith("e_score_correction_bias"):
                # nonzero, so expert choice differs from the scores alone (as in the real model)
                b.copy_(0.05 * torch.randn(b.shape, generator=gen))
    return save(model, out_dir)


def main(argv: list[str] | None = None) -> int:
    return cli(
        argv, module="sglang_dcp.tiny_deepseek", what="DeepSeek-V3", build=build,
        describe=lambda c: (
            f"MLA kv_lora_rank {c['kv_lora_rank']} + rope {c['qk_rope_head_dim']}, "
            f"{c['n_routed_experts']} experts top-{c['num_experts_per_tok']}"
        ),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
