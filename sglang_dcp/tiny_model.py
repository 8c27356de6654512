"""Write a deterministic random-weight Qwen3-MoE checkpoint and a small local tokenizer.

``python -m sglang_dcp.tiny_model OUT_DIR [--seed N]``

The checkpoint has the real Qwen3-MoE architecture (HF layout, safetensors) at toy size:
3 layers, hidden 64, 4 query heads / 2 KV heads (GQA), head_dim 16, 8 experts, top-2. The
tokenizer is a byte-level BPE trained here on an embedded text, so any string encodes and
nothing is downloaded. The same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

TINY_CONFIG = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=8,
    num_experts_per_tok=2,
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    # Large init so logits are well separated: greedy decoding must not hinge on float noise
    # when SGLang's kernels and HF's disagree in the last bits.
    initializer_range=0.5,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """\
Long requests get their KV cache and attention spread over several data parallel ranks; short
ones stay local. A global planner keeps both KV occupancy and per-rank batch size balanced so no
rank straggles in the per-layer mixture-of-experts all-to-all. The quick brown fox jumps over the
lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump! Sphinx of
black quartz, judge my vow. 0123456789 + - * / = ( ) [ ] { } < > , . ; : ? ! ' " # $ % & @ ^ _ ~
"""


def build_tokenizer(out_dir: str, vocab_size: int):
    """Train a byte-level BPE on the embedded corpus and save it in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build(out_dir: str, seed: int = 0) -> str:
    """Write the checkpoint and tokenizer to ``out_dir``; returns ``out_dir``."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, TINY_CONFIG["vocab_size"])
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3MoeConfig(**TINY_CONFIG, eos_token_id=eos, pad_token_id=eos, bos_token_id=None)
    config.dtype = "float32"

    gen = torch.Generator().manual_seed(seed)
    model = Qwen3MoeForCausalLM(config)
    random_weights(model, config.initializer_range, gen)
    return save(model, out_dir)


def random_weights(model, initializer_range: float, gen) -> None:
    """Seeded weights in name order: norms near 1, the rest scaled by fan-in."""
    import torch

    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                # RMSNorm weights near 1, perturbed so they are not a no-op.
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                std = initializer_range / max(1.0, p.shape[-1] ** 0.5 / 8)
                p.copy_(std * torch.randn(p.shape, generator=gen))


def save(model, out_dir: str) -> str:
    """Greedy generation config, safetensors; returns ``out_dir``."""
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def checkpoint_digest(out_dir: str) -> str:
    """sha256 over the weight files, to check determinism."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".safetensors"):
            with open(os.path.join(out_dir, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def cli(argv, *, module: str, what: str, build, describe) -> int:
    """``python -m <module> OUT_DIR [--seed N]``: write a tiny checkpoint, print ``describe``
    of its config and the weights' digest."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=f"Write a deterministic random-weight tiny {what} checkpoint + tokenizer.",
    )
    p.add_argument("out_dir", help="directory to write (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = p.parse_args(argv)
    build(args.out_dir, seed=args.seed)
    with open(os.path.join(args.out_dir, "config.json")) as f:
        cfg = json.load(f)
    print(
        f"wrote {args.out_dir}: {cfg['model_type']}, {cfg['num_hidden_layers']} layers, "
        f"{describe(cfg)}, weights sha256 {checkpoint_digest(args.out_dir)[:16]}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli(
        argv, module="sglang_dcp.tiny_model", what="Qwen3-MoE", build=build,
        describe=lambda c: f"{c['num_local_experts']} experts top-{c['num_experts_per_tok']}",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
