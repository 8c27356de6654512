"""The tiny checkpoint is deterministic, HF-loadable and has the promised architecture."""

import json
import os

from sglang_dcp.tiny_model import build, checkpoint_digest, main


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build(str(tmp_path / "a"), seed=0)
    b = build(str(tmp_path / "b"), seed=0)
    c = build(str(tmp_path / "c"), seed=1)
    assert checkpoint_digest(a) == checkpoint_digest(b) != checkpoint_digest(c)
    with open(os.path.join(a, "tokenizer.json")) as fa, open(os.path.join(b, "tokenizer.json")) as fb:
        assert fa.read() == fb.read()


def test_architecture_and_tokenizer(tmp_path):
    out = str(tmp_path / "m")
    assert main([out, "--seed", "3"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["Qwen3MoeForCausalLM"]
    assert cfg["num_local_experts"] >= 8 and cfg["num_experts_per_tok"] == 2
    assert cfg["num_attention_heads"] > cfg["num_key_value_heads"]  # GQA
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    text = "Long requests spread over ranks: 12345!"
    ids = tok(text)["input_ids"]
    assert max(ids) < cfg["vocab_size"] and tok.decode(ids) == text
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
