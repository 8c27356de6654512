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
    """Token ids HF greedy-generates after ``input_ids``: exactly ``max_new_tokens``, EOS
    neither stops nor is suppressed, as SGLang's ``ignore_eos`` does.

    A plain cached argmax loop, not ``model.generate(min_new_tokens=...)``: that masks the EOS
    logit (``MinNewTokensLogitsProcessor``), and the tiny model's EOS is token 0, which greedy
    decoding legitimately picks (``test_server_dcp`` found a prompt whose second token is 0).
    """
    import torch

    model = _load(model_path)
    out_ids: list[int] = []
    with torch.no_grad():
        out = model(torch.tensor([input_ids]), use_cache=True)
        for _ in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            out_ids.append(token)
            if len(out_ids) == max_new_tokens:
                break
            out = model(
                torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True
            )
    return out_ids


def prompts(seed: int, count: int, lengths: tuple[int, ...], vocab: int = 512) -> list[list[int]]:
    """Deterministic random prompts (token ids, avoiding the 3 special tokens)."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(lengths[i % len(lengths)])] for i in range(count)]
