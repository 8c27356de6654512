"""Greedy decoding with HF transformers: the oracle the servers are compared against."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=4)
def _load(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    return model


def hf_greedy(model_path: str, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """Token ids HF greedy-generates after ``input_ids`` (EOS ignored: exactly max_new_tokens)."""
    import torch

    model = _load(model_path)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([input_ids]),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.config.pad_token_id,
        )
    return out[0, len(input_ids):].tolist()


def prompts(seed: int, count: int, lengths: tuple[int, ...], vocab: int = 512) -> list[list[int]]:
    """Deterministic random prompts (token ids, avoiding the 3 special tokens)."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(lengths[i % len(lengths)])] for i in range(count)]
