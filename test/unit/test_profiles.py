"""Cost profiles: loading by name and path, validation errors that name the field, the model."""

import json

import pytest

from sglang_dcp.planner import ClusterSpec, CostProfile, available_profiles, load_profile

SHIPPED = ("deepseek-v3-h200", "qwen3-235b-h200")


def test_shipped_profiles_load_with_provenance():
    assert set(SHIPPED) <= set(available_profiles())
    for name in SHIPPED:
        p = load_profile(name)
        assert p.name == name
        assert p.kv_capacity_tokens % p.page_size == 0
        prov = p.provenance
        assert prov["measured"] is False
        assert "DERIVED" in prov["source"] and "anchors" in prov["source"]
        assert prov["figures_used"] and prov["arithmetic"] and prov["date"]


def test_profile_figures_match_anchors():
    ds, qw = load_profile("deepseek-v3-h200"), load_profile("qwen3-235b-h200")
    assert ds.attention == "mla" and qw.attention == "gqa"
    assert ds.attn_us_per_kv_token == pytest.approx(0.0257)  # anchors 5.1: 25.7 ns
    assert qw.attn_us_per_kv_token == pytest.approx(0.045, rel=0.01)  # anchors 5.1: 45 ns
    assert ds.kv_bytes_per_token == 576 * 2 * 61
    assert qw.kv_bytes_per_token == 2 * 4 * 128 * 2 * 94
    assert ds.kv_capacity_tokens == pytest.approx(60e9 / ds.kv_bytes_per_token, abs=64)  # 5.4


def test_load_by_path_and_roundtrip(tmp_path):
    p = load_profile("deepseek-v3-h200")
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(p.to_dict()))
    q = load_profile(str(f))
    assert q == p and dict(q.provenance) == dict(p.provenance)


def _write(tmp_path, mutate):
    d = load_profile("qwen3-235b-h200").to_dict()
    mutate(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    return str(f)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["costs_us"].pop("moe_us_per_token"), "costs_us.moe_us_per_token"),
        (lambda d: d["costs_us"].update(attn_us_per_kv_token=-1.0), "attn_us_per_kv_token"),
        (lambda d: d["costs_us"].update(merge_us_per_part="x"), "merge_us_per_part"),
        (lambda d: d["costs_us"].update(bogus=1.0), "costs_us.bogus"),
        (lambda d: d.update(page_size=0), "page_size"),
        (lambda d: d.update(kv_capacity_tokens=1000), "kv_capacity_tokens"),
        (lambda d: d.update(attention="linear"), "attention"),
        (lambda d: d.pop("ep_size"), "ep_size"),
        (lambda d: d.pop("provenance"), "provenance.source"),
    ],
)
def test_validation_names_the_bad_field(tmp_path, mutate, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_profile(_write(tmp_path, mutate))


def test_unknown_name_lists_shipped():
    with pytest.raises(ValueError, match="deepseek-v3-h200"):
        load_profile("no-such-profile")


def test_step_time_model():
    p = load_profile("deepseek-v3-h200")
    one = p.rank_time_us(1000, 3, 2)
    assert one == pytest.approx(
        p.attn_us_fixed + 1000 * p.attn_us_per_kv_token + 3 * p.attn_us_per_item
        + max(p.compute_us_floor, 2 * p.compute_us_per_token)
    )
    # the EP barrier: the slowest rank and the largest batch set the step
    kv, b = [1000, 5000], [7, 2]
    items = b
    st = p.step_time_us(kv, items, b)
    assert st == pytest.approx(
        max(p.rank_time_us(kv[r], items[r], b[r]) for r in range(2)) + p.moe_us(7)
    )
    # a guest anywhere adds the fixed exchange once, plus per-item costs on both ends
    st2 = p.step_time_us(kv, [8, 2], b, guest_in=[1, 0], guest_out=[0, 1])
    assert st2 > st + p.exchange_us_fixed - 1e-9
    assert p.prefill_us(0) == 0 and p.prefill_us(2048) > 2 * p.prefill_us(1024) - 1e-9
    assert p.break_even_tokens() % p.page_size == 0
    c = p.cluster(4)
    assert isinstance(c, ClusterSpec) and c.kv_capacity == (p.kv_capacity_tokens,) * 4


def test_profile_is_frozen():
    p = load_profile("qwen3-235b-h200")
    with pytest.raises(Exception):
        p.page_size = 16  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.provenance["source"] = "x"  # type: ignore[index]
    with pytest.raises(ValueError, match="attention"):
        CostProfile(**{**p.to_dict()["costs_us"], **{k: v for k, v in p.to_dict().items()
                       if k not in ("costs_us",)}, "attention": "?"})
