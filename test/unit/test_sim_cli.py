"""CLI: one-line errors with exit code 2, and a small end-to-end run writing the outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_dcp.sim.search import SearchSpec, abort_after, find_max_rate

ROOT = Path(__file__).resolve().parents[2]
POLICY_KEYS = {"max_rate_rps", "goodput_rps", "p50_tpot_ms", "p99_tpot_ms", "p99_latency_ms", "kv_imbalance",
               "batch_imbalance", "finished", "rejected"}


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sglang_dcp.sim", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["--trace", "/nonexistent/trace.jsonl", "--out", "x"], "--trace: no such file"),
    (["--workload", "tiny", "--policies", "round_robin,bogus", "--out", "x"],
     "unknown policy 'bogus'"),
    (["--workload", "tiny", "--profile", "nope", "--out", "x"], "unknown cost profile 'nope'"),
    (["--workload", "tiny", "--profile", "/nonexistent/p.json", "--out", "x"],
     "cost profile file not found"),
    (["--workload", "agentic-nope", "--out", "x"], "unknown workload 'agentic-nope'"),
    (["--workload", "bimodal", "--ranks-per-node", "0", "--out", "x"],
     "--ranks-per-node must be >= 1"),
    (["--workload", "bimodal", "--num-requests", "0", "--out", "x"],
     "--num-requests must be >= 1"),
    (["--workload", "nope", "--out", "x"], "unknown workload 'nope'"),
    (["--workload", "tiny", "--ranks", "0", "--out", "x"], "--ranks must be >= 1"),
    (["--workload", "tiny", "--kv-capacity", "10", "--out", "x"],
     "--kv-capacity must be at least one page (64 tokens"),
    # policy options are checked against the run's cluster (12 ranks), not a one-rank probe
    (["--workload", "tiny", "--ranks", "12", "--policies", "uniform:group_size=5", "--out", "x"],
     "group_size=5 must be >= 1 and divide num_ranks=12"),
    (["--workload", "tiny", "--exchange-scale", "-1", "--out", "x"],
     "--exchange-scale must be a number >= 0"),
    (["--workload", "tiny", "--reuse", "/nonexistent/summary.json", "--out", "x"],
     "--reuse /nonexistent/summary.json: not a readable sim summary.json"),
    (["--workload", "tiny", "--slo-tpot-ms", "-1", "--out", "x"], "--slo-tpot-ms must be > 0"),
    (["--workload", "tiny"], "--out"),
    (["--out", "x"], "--trace --workload"),
    (["--workload", "tiny", "--out", "/dev/null/x"], "--out: cannot create directory"),
])
def test_bad_arguments_fail_in_one_line(args, needle, tmp_path):
    res = _cli(*[str(tmp_path / "out") if a == "x" else a for a in args])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]


def test_policy_options_that_need_the_cluster_are_accepted(tmp_path):
    """``uniform:group_size=4`` on 12 ranks (node-aligned groups) was refused by a check that
    built the policy on one rank."""
    res = _cli("--workload", "tiny", "--num-requests", "40", "--ranks", "12",
               "--policies", "uniform:group_size=4", "--rate", "2", "--out",
               str(tmp_path / "out"), "--quiet", "--no-plots")
    assert res.returncode == 0, res.stderr


def test_help_documents_every_flag():
    res = _cli("--help")
    assert res.returncode == 0
    for flag in ("--trace", "--workload", "--ranks", "--profile", "--slo-tpot-ms", "--policies",
                 "--out", "--seed", "--max-kv-wait-ms", "--search-precision"):
        assert flag in res.stdout


def test_end_to_end_synthetic(tmp_path):
    out = tmp_path / "res"
    res = _cli("--workload", "tiny", "--ranks", "4", "--kv-capacity", "32768",
               "--max-kv-wait-ms", "100", "--policies", "round_robin,total_tokens,uniform,dcp",
               "--max-runs", "6", "--seed", "1", "--quiet", "--out", str(out))
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["policies"]) == ["round_robin", "total_tokens", "uniform", "dcp"]
    for name, fig in summary["policies"].items():
        assert set(fig) == POLICY_KEYS, name
        assert fig["finished"] + fig["rejected"] == 120
        assert fig["max_rate_rps"] > 0
        assert fig["goodput_rps"] == pytest.approx(fig["max_rate_rps"])  # nothing rejected
        assert fig["p50_tpot_ms"] <= fig["p99_tpot_ms"]
    assert summary["search"]["rel_precision"] == 0.02
    ref = summary["reference"]["rate_rps"]
    assert ref == max(summary["policies"][n]["max_rate_rps"] for n in ("round_robin",
                                                                       "total_tokens"))
    pooled = summary["pooled_bound"]["rate_rps"]
    assert pooled > 0 and summary["ratios"]["headroom_captured_pooled"] is not None
    for png in ("goodput.png", "kv_occupancy.png", "step_time.png"):
        assert (out / png).stat().st_size > 1000
    assert "| dcp |" in (out / "summary.md").read_text()


def test_search_brackets_and_bisects():
    limit = 7.3

    class Fake:
        def __init__(self, rate):
            self.rate_rps, self.aborted = rate, False
            import numpy as np
            self.tpot_ms = np.array([rate * 10.0])
            self.queue_ms = np.array([0.0])

    spec = SearchSpec(slo_tpot_ms=limit * 10, max_kv_wait_ms=1.0, rel_precision=0.01,
                      max_runs=30)
    res = find_max_rate(Fake, 1.0, spec)
    assert res.max_rate_rps <= limit < res.max_rate_rps * (1 + res.precision)
    assert res.precision <= 0.01 and len(res.trials) < 15
    assert find_max_rate(Fake, 100.0, spec).max_rate_rps <= limit


def test_abort_after_decides_the_p99():
    import numpy as np

    for n in (1, 7, 100, 12031):
        c = abort_after(n)
        x = np.zeros(n)
        x[n - min(c, n):] = 1.0
        assert np.percentile(x, 99) > 0.5 or c > n


def test_profile_path_missing_coefficient_and_bad_trace_line(tmp_path):
    """A measured profile is passed by path; a missing coefficient or a bad trace line is one
    line on stderr naming it, exit code 2."""
    from sglang_dcp.planner import load_profile

    d = load_profile("deepseek-v3-h200").to_dict()
    del d["costs_us"]["moe_us_per_token"]
    prof = tmp_path / "mine.json"
    prof.write_text(json.dumps(d))
    res = _cli("--workload", "tiny", "--profile", str(prof), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "costs_us.moe_us_per_token" in res.stderr
    d["costs_us"]["moe_us_per_token"] = 1.0
    prof.write_text(json.dumps(d))
    res = _cli("--workload", "tiny", "--num-requests", "20", "--profile", str(prof),
               "--policies", "dcp", "--rate", "5", "--no-plots", "--quiet",
               "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2}\n'
                     '{"timestamp": 1, "output_length": 2}\n')
    res = _cli("--trace", str(trace), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "t.jsonl:2" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_prefill_delay_is_recorded_and_a_reuse_across_it_is_refused(tmp_path):
    """``--prefill-delay``: the summary records it; a summary from before the flag (no key)
    replayed the delay, so a default (shift) run refuses to copy its rows, and both ways."""
    base = ("--workload", "tiny", "--ranks", "4", "--kv-capacity", "32768", "--max-runs", "4",
            "--seed", "1", "--quiet", "--no-plots")
    shift, replay = tmp_path / "shift", tmp_path / "replay"
    assert _cli(*base, "--policies", "total_tokens,dcp", "--out", str(shift)).returncode == 0
    res = _cli(*base, "--policies", "total_tokens", "--prefill-delay", "replay",
               "--out", str(replay))
    assert res.returncode == 0, res.stderr
    assert json.loads((shift / "summary.json").read_text())["search"]["prefill_delay"] == "shift"
    old = json.loads((replay / "summary.json").read_text())
    assert old["search"].pop("prefill_delay") == "replay"
    (replay / "old.json").write_text(json.dumps(old))  # as written before the flag existed
    for src, flag, needle in ((replay / "old.json", (), "--prefill-delay replay, this run shift"),
                              (shift / "summary.json", ("--prefill-delay", "replay"),
                               "--prefill-delay shift, this run replay")):
        bad = _cli(*base, "--policies", "dcp", *flag, "--reuse", str(src),
                   "--out", str(tmp_path / "x"))
        assert bad.returncode == 2 and needle in bad.stderr, bad.stderr
    assert _cli(*base, "--prefill-delay", "later", "--out", "x").returncode == 2


def test_exchange_wire_is_recorded_and_a_reuse_across_it_is_refused(tmp_path):
    """``--exchange-wire``: the summary records it (default ``scoped``, what the server ships);
    a summary from before the key charged ``bucketed``, so a scoped run refuses its rows."""
    base = ("--workload", "tiny", "--ranks", "4", "--kv-capacity", "32768", "--max-runs", "4",
            "--seed", "1", "--quiet", "--no-plots")
    out = tmp_path / "s"
    assert _cli(*base, "--policies", "total_tokens", "--out", str(out)).returncode == 0
    new = json.loads((out / "summary.json").read_text())
    assert new["cluster"].pop("exchange_wire") == "scoped"
    (out / "old.json").write_text(json.dumps(new))  # as written before the key existed
    bad = _cli(*base, "--policies", "dcp", "--reuse", str(out / "old.json"),
               "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "'bucketed', this run 'scoped'" in bad.stderr, bad.stderr
    ok = _cli(*base, "--policies", "dcp", "--exchange-wire", "bucketed",
              "--reuse", str(out / "old.json"), "--out", str(tmp_path / "y"))
    assert ok.returncode == 0, ok.stderr
