"""Attention cost by layer kind (issue 29): the family profiles, the per-kind sums, the home-only
per-request term, validation, and the context-limited mixes."""

import json

import numpy as np
import pytest

from sglang_dcp.planner import ClusterSpec, CostProfile, load_profile
from sglang_dcp.planner.dcp import DcpPolicy
from sglang_dcp.planner.layer_kinds import LayerKind
from sglang_dcp.sim.cost import StepModel
from sglang_dcp.sim.workload import make_workload
from sglang_dcp.types import Request

FAMILY = {
    "deepseek-v32-h200-node8": "dsa",
    "deepseek-v32-fp8kv-h200-ep16": "dsa",
    "glm5-h200-ep16": "dsa",
    "deepseek-v4-pro-h200-ep16": "csa+hca+window",
    "deepseek-v4-flash-h200-node8": "csa+hca+window",
    "qwen35-397b-h200-node8": "dense-gqa+linear",
    "minimax-m2-h200-ep16": "dense-gqa",
    "deepseek-v3-h200": "dense-mla",
}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_profiles_load_with_provenance(name):
    p = load_profile(name)
    assert p.family == FAMILY[name]
    prov = p.provenance
    if p.attention_layers:
        assert prov["measured"] is False and "DERIVED" in prov["source"]
        assert prov["figures_used"] and prov["arithmetic"] and prov["not_found"]
        assert prov["context_limit_tokens"] >= 131_072


def test_kv_bytes_match_the_sglang_layouts():
    # issue 29 / mem_cache: (MLA latent + indexer 132 B) x 61 layers
    assert load_profile("deepseek-v32-h200-ep16").kv_bytes_per_token == (1152 + 132) * 61 == 78_324
    assert load_profile("deepseek-v32-fp8kv-h200-ep16").kv_bytes_per_token == 788 * 61 == 48_068
    # ~5.5 KB (Pro) / ~3.9 KB (Flash): CSA 584/4 + 132/4 B, HCA 584/128 B per token and layer
    assert load_profile("deepseek-v4-pro-h200-ep16").kv_bytes_per_token == 5512
    assert load_profile("deepseek-v4-flash-h200-ep16").kv_bytes_per_token == 3851
    assert load_profile("qwen35-397b-h200-ep16").kv_bytes_per_token == 15 * 2048


def test_kinds_sum_into_the_step_model():
    p = load_profile("deepseek-v4-pro-h200-ep16")
    per = {k.kind: k for k in p.attention_layers}
    assert p.attn_us_per_kv_token == pytest.approx(
        per["csa"].layers * per["csa"].us_per_kv_token
        + per["hca"].layers * per["hca"].us_per_kv_token)
    assert p.attn_us_per_item == pytest.approx(
        p.layer_base["attn_us_per_item"] + per["csa"].layers * per["csa"].us_per_item)
    assert p.attn_us_per_request == pytest.approx(per["window"].layers * per["window"].us_per_request)
    assert p.exchange_us_fixed == p.layer_base["exchange_us_fixed"] + 40.0 * per["csa"].layers
    assert p.exchange_us_per_item > p.layer_base["exchange_us_per_item"]  # candidate exchange


def test_dense_kind_reproduces_an_old_profile_exactly():
    old = load_profile("qwen3-235b-h200")
    d = old.to_dict()
    d["costs_us"].pop("attn_us_per_kv_token")
    d.pop("kv_bytes_per_token")
    d["attention_layers"] = [{"kind": "dense", "layers": 94, "kv_bytes_per_token": 2048,
                              "us_per_kv_token": old.attn_us_per_kv_token / 94}]
    new = CostProfile.from_dict(d)
    assert new.kv_bytes_per_token == old.kv_bytes_per_token
    assert new.attn_us_per_kv_token == pytest.approx(old.attn_us_per_kv_token, rel=1e-12)
    for f in ("attn_us_per_item", "exchange_us_per_item", "exchange_us_fixed"):
        assert getattr(new, f) == getattr(old, f)
    assert old.attn_us_per_request == new.attn_us_per_request == 0.0


def test_per_request_term_is_paid_at_home_only():
    p = load_profile("qwen35-397b-h200-node8")
    assert p.attn_us_per_request > 80  # 45 Gated DeltaNet states, read and written
    home = p.rank_time_us(1e5, items=3, batch=3)
    guest = p.rank_time_us(1e5, items=3, batch=0, guest_in=3)
    assert home - p.compute_us(3) - p.attn_us_per_request * 3 == pytest.approx(
        guest - p.compute_us(0) - p.exchange_us(3, 0))


def test_layered_profile_roundtrips(tmp_path):
    p = load_profile("deepseek-v4-flash-h200-node8")
    f = tmp_path / "p.json"
    f.write_text(json.dumps(p.to_dict()))
    q = load_profile(str(f))
    assert q == p and q.layer_base == p.layer_base


@pytest.mark.parametrize("name", ["qwen35-397b-h200-node8", "deepseek-v32-h200-node8",
                                  "deepseek-v4-flash-h200-ep16"])
def test_vectorized_step_model_matches_the_profile(name):
    p = load_profile(name)
    rng = np.random.default_rng(0)
    n = 8
    m = StepModel(p, n, exchange_wire="items")  # per item: CostProfile.step_time_us
    for _ in range(20):
        b, gi, go = (rng.integers(0, 40, n) for _ in range(3))
        kv = rng.uniform(0, p.kv_capacity_tokens, (3, n))
        m.set_loads(b, gi, go)
        want = [p.step_time_us(list(k), list(b + gi), list(b), list(gi), list(go)) * 1e-3
                for k in kv]
        assert m.step_ms(kv) == pytest.approx(want, rel=1e-9)  # slope from a difference


def test_dcp_planner_caches_the_per_request_term():
    p = load_profile("qwen35-397b-h200-node8")
    pol = DcpPolicy(ClusterSpec.uniform(8, 200_000, 64), p)
    for i in range(40):
        pol.admit(Request(str(i), 1000 + 7919 * i % 150_000, 100))
    pol.verify()  # the inlined rank cost equals profile.rank_time_us, per-request term included


@pytest.mark.parametrize("kind, bad, field", [
    ("linear", {"us_per_kv_token": 1e-3}, "us_per_kv_token"),
    ("hca", {"exchange_us_per_item": 1.0}, "candidate exchange"),
    ("spline", {}, "layer kind"),
    ("dense", {"layers": 0}, "layers"),
    ("dsa", {"us_per_item": -1.0}, "us_per_item"),
])
def test_layer_kind_validation(kind, bad, field):
    with pytest.raises(ValueError, match=field):
        LayerKind(**{"kind": kind, "layers": 4, "us_per_kv_token": 0.0, **bad})


def test_layered_json_must_not_repeat_the_summed_fields():
    d = load_profile("glm5-h200-node8").to_dict()
    d["costs_us"]["attn_us_per_kv_token"] = 0.01
    with pytest.raises(ValueError, match="attn_us_per_kv_token"):
        CostProfile.from_dict(d)


def test_context_limited_mixes():
    base = make_workload("agentic-claude", seed=0, num_requests=2000)
    same = make_workload("agentic-claude", seed=0, num_requests=2000)
    assert np.array_equal(base.input_len, same.input_len)
    for name, limit in (("agentic-claude@160k", 160 * 1024), ("bimodal@1m", 1 << 20)):
        w = make_workload(name, seed=0, num_requests=2000)
        assert (w.input_len + w.output_len).max() <= limit
    long = make_workload("bimodal@1m", seed=0, num_requests=2000).input_len
    assert ((long > 512 * 1024).mean()) == pytest.approx(0.2, abs=0.03)
    assert (make_workload("agentic-claude@1m", seed=0, num_requests=2000).input_len
            > 600 * 1024).any()
