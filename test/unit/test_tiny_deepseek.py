"""The tiny DeepSeek-V3 checkpoint is deterministic, HF-loadable and has the promised architecture."""

import json
import os

from sglang_dcp.tiny_deepseek import build, main
from sglang_dcp.tiny_model import checkpoint_digest


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build(str(tmp_path / "a"), seed=0)
    b = build(str(tmp_path / "b"), seed=0)
    c = build(str(tmp_path / "c"), seed=1)
    assert checkpoint_digest(a) == checkpoint_digest(b) != checkpoint_digest(c)


def test_architecture(tmp_path):
    out = str(tmp_path / "m")
    assert main([out]) == 0
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert cfg["q_lora_rank"] and cfg["kv_lora_rank"] and cfg["qk_rope_head_dim"]  # MLA
    assert cfg["first_k_dense_replace"] == 1 < cfg["num_hidden_layers"]  # dense, then MoE
    assert cfg["n_shared_experts"] == 1 and cfg["n_group"] > cfg["topk_group"] >= 1
    assert cfg["topk_method"] == "noaux_tc" and cfg["scoring_func"] == "sigmoid"
    assert cfg["rope_parameters"]["rope_type"] == "yarn"
    from safetensors import safe_open

    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
    assert "model.layers.0.mlp.gate_proj.weight" in keys  # dense first layer
    assert "model.layers.1.mlp.shared_experts.gate_proj.weight" in keys
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in keys
    assert bias.abs().sum() > 0  # the routing bias is exercised
