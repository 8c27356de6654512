"""The exchange counterfactual of ``bench/sim_diagnose.py`` (issue 27's attribution): a profile
whose exchange costs are scaled and nothing else, a search that reproduces the matrix's rate at
scale 1, and the report's reason text computed from it."""

import sys
from pathlib import Path

import pytest

from sglang_dcp.planner.profile_io import load_profile
from sglang_dcp.sim.cost import scaled_exchange
from sglang_dcp.sim.engine import SimOptions
from sglang_dcp.sim.experiment import Experiment, run_experiment
from sglang_dcp.sim.search import SearchSpec, find_max_rate
from sglang_dcp.sim.workload import make_workload

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_scaled_exchange_changes_only_the_exchange():
    p = load_profile("kimi-k2-h200-ep32")
    assert scaled_exchange(p, 1.0) is p
    q = scaled_exchange(p, 0.5)
    assert q.exchange_us_fixed == p.exchange_us_fixed / 2
    assert q.exchange_us_per_item == p.exchange_us_per_item / 2
    assert q.exchange_us_per_item_intranode == p.exchange_us_per_item_intranode / 2
    for f in ("attn_us_per_kv_token", "attn_us_fixed", "moe_us_per_token", "compute_us_floor",
              "merge_us_per_part", "kv_capacity_tokens", "prefill_us_per_token"):
        assert getattr(q, f) == getattr(p, f), f
    assert "@exchange x0.5" in q.name
    z = scaled_exchange(p, 0.0)
    assert z.exchange_us(3, 3) == 0.0 and z.exchange_us_fixed == 0.0
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="exchange scale"):
            scaled_exchange(p, bad)


def _exp(scale=1.0, policies=("total_tokens", "dcp")):
    w = make_workload("agentic-codex", seed=4, num_requests=150)
    return Experiment(w, 4, "deepseek-v3-h200", policies, SearchSpec(35.0, 2000.0, 0.05, 6),
                      SimOptions(), kv_capacity=300_000, exchange_scale=scale)


def test_counterfactual_search_at_scale_one_reproduces_the_matrix_and_free_is_a_plain_search():
    import argparse

    import sim_diagnose

    full, _ = run_experiment(_exp())
    e = _exp()
    args = argparse.Namespace(ranks=4, profile="deepseek-v3-h200", policy="dcp",
                              kv_capacity=300_000)
    old = sim_diagnose.COUNTERFACTUALS
    try:
        sim_diagnose.COUNTERFACTUALS = {"1": (1.0, "bucketed"), "0": (0.0, "bucketed"),
                                        "items": (1.0, "items")}
        got = sim_diagnose.counterfactuals(args, e.workload, full, e.search)
    finally:
        sim_diagnose.COUNTERFACTUALS = old
    assert got["1"] == full["policies"]["dcp"]["max_rate_rps"]
    items = Experiment(e.workload, 4, "deepseek-v3-h200", ("dcp",), e.search, SimOptions(),
                       kv_capacity=300_000, exchange_wire="items")
    assert got["items"] == find_max_rate(lambda r: items.run("dcp", r, early_stop=True),
                                         e.workload.rate_rps, e.search).max_rate_rps
    free = _exp(0.0, ("dcp",))
    again = find_max_rate(lambda r: free.run("dcp", r, early_stop=True),
                          free.workload.rate_rps, free.search).max_rate_rps
    assert got["0"] == again


def test_reason_names_the_exchange_price_only_when_free_would_reach_the_goal():
    from sim_why import exchange_captured, reason

    step = {"step": 30.0, "pooled": 25.0, "rank_imb": 2.0, "moe_imb": 0.1, "fixed": 2.4,
            "item_ex": 0.5}
    pol = {"tpot_ok": True, "wait_ok": False, "guests_live": 0.9, "step_ms": step,
           "waits": {"kv": {"over_2s": 5}, "budget": {"over_2s": 1}, "queue": {"over_2s": 0}}}
    r = {"best_baseline_goodput": 1.0, "pooled": 2.0, "captured_pooled": 0.3,
         "goodput": {"dcp": 1.3}, "max_rate": {"dcp": 1.3},
         "why": {"policy": pol, "pooled": {"mean_step_ms": 24.0, "p99_tpot_ms": 30.0},
                 "exchange_scaled": {"0": 1.9, "0.5": 1.5, "items": 1.2}}}
    assert exchange_captured(r) == pytest.approx({"0": 0.9, "0.5": 0.5, "items": 0.2})
    assert "binds: KV waits" in reason(r)
    assert ("the exchange's price: free it would capture 0.90 (per item 0.20, half price "
            "0.50)") in reason(r)
    r["why"]["exchange_scaled"] = {"0": 1.4, "0.5": 1.35}
    assert "not the exchange's price alone: free it would capture 0.40" in reason(r)
    del r["why"]["exchange_scaled"]  # an older why.json: no counterfactual, no claim
    assert "exchange's price" not in reason(r) and exchange_captured(r) == {}


def test_price_row_counts_the_scenarios_the_exchange_explains():
    from sim_why import price_row

    def r(i, cap, cf):
        return {"id": i, "captured_pooled": cap, "best_baseline_goodput": 1.0, "pooled": 2.0,
                "goodput": {"dcp": 1.0 + cap}, "max_rate": {"dcp": 1.0 + cap},
                "why": {"exchange_scaled": cf} if cf else {}}

    rows = [r("a", 0.3, {"0": 1.9, "items": 1.7, "0.5": 1.5}),
            r("b", 0.5, {"0": 1.5, "items": 1.5, "0.5": 1.5}),
            r("c", 0.7, {"0": 1.9}),  # met: not counted
            r("d", 0.2, None)]  # no counterfactual run
    (line,) = price_row(rows, 0.6)
    assert "of the 2 scenarios below 60%" in line
    assert "free: 1 (median 0.70)" in line and "at half price: 0" in line
    assert "not even free: b" in line and "(1 without a run)" in line
    assert price_row([r("d", 0.2, None)], 0.6) == []


def test_invariant_price_row_compares_dcp_priced_otherwise_with_the_policy_it_trails():
    from sim_why import invariant_price_row

    r = {"id": "k16", "dcp_vs": {"total_tokens": 0.89, "uniform": 0.96, "round_robin": 3.0},
         "goodput": {"dcp": 1.2, "total_tokens": 1.5, "uniform": 1.25},
         "max_rate": {"dcp": 1.2},
         "why": {"exchange_scaled": {"0": 1.8, "items": 1.2, "0.5": 1.47}}}
    (line,) = invariant_price_row([r], 0.98)
    assert "k16 vs total_tokens 0.89x -> free 1.20x, per item 0.80x, half price 0.98x" in line
    # uniform pays the same exchange: a dcp-only price change says nothing against it
    assert "not a price question (the other policy pays the same exchange): k16 vs uniform " \
           "0.96x" in line and "round_robin" not in line and "measured reason" in line
    r2 = {**r, "id": "old", "why": None, "dcp_vs": {"total_tokens": 0.9}}
    assert "old vs total_tokens: no counterfactual run" in invariant_price_row([r2], 0.98)[0]
    ok = {**r, "dcp_vs": {"total_tokens": 1.0, "uniform": 0.99}}
    assert invariant_price_row([ok], 0.98) == []


def test_within_two_percent_row_says_when_the_competitor_wins_by_rejecting():
    from sim_report import _targets

    def r(i, pooled, rej):
        return {"id": i, "role": "long-context", "deployment": "r8", "workload": "chat-agentic",
                "dcp_vs": {"total_tokens": 0.72}, "captured_fluid": None,
                "captured_pooled": None, "pooled": pooled, "num_requests": 1500,
                "goodput": {"dcp": 0.587, "total_tokens": 0.816},
                "rejected": {"dcp": 0, "total_tokens": rej, "round_robin": rej}, "why": None}

    (row,) = [x for x in _targets([r("a", 0.79, 162)], [], held=True) if "within 2%" in x]
    assert "a (total_tokens 0.72x; it rejects 162 of 1500, and the pooled bound, serving " \
           "them all, is 0.97x it)" in row and "**NOT MET**" in row
    (row,) = [x for x in _targets([r("b", 1.2, 0)], [], held=True) if "within 2%" in x]
    assert "b (total_tokens 0.72x)" in row  # nothing rejected: no note
    (row,) = [x for x in _targets([r("c", 1.2, 77)], [], held=True) if "within 2%" in x]
    assert "c (total_tokens 0.72x; it rejects 77 of 1500, which `dcp` serves)" in row


def test_cli_exchange_scale_labels_its_output_and_refuses_a_differently_priced_reuse(tmp_path):
    import json
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sglang_dcp.sim", "--workload", "tiny",
                               "--ranks", "4", "--kv-capacity", "32768", "--max-runs", "4",
                               "--seed", "1", "--quiet", "--no-plots", *args], cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
                              text=True, timeout=120)

    plain, free = tmp_path / "plain", tmp_path / "free"
    assert cli("--policies", "total_tokens,dcp", "--out", str(plain)).returncode == 0
    res = cli("--policies", "dcp", "--exchange-scale", "0", "--out", str(free))
    assert res.returncode == 0, res.stderr
    s = json.loads((free / "summary.json").read_text())
    assert s["cluster"]["exchange_scale"] == 0.0
    assert "**COUNTERFACTUAL**: the exchange's fixed and per-item costs x0" in \
        (free / "summary.md").read_text()
    assert "exchange_scale" not in json.loads((plain / "summary.json").read_text())["cluster"]
    assert "COUNTERFACTUAL" not in (plain / "summary.md").read_text()
    bad = cli("--policies", "dcp", "--exchange-scale", "0.5", "--reuse",
              str(plain / "summary.json"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "priced the exchange x1, this run x0.5" in bad.stderr
    back = cli("--policies", "total_tokens", "--reuse", str(free / "summary.json"), "--out",
               str(tmp_path / "y"))  # a plain run cannot copy rows priced otherwise either
    assert back.returncode == 2 and "priced the exchange x0, this run x1" in back.stderr
