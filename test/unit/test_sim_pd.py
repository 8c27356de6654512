"""The simulator's PD deployment (issue 24 item 7): landing in shards vs on the home."""

import json

import numpy as np
import pytest

from sglang_dcp.planner import make_policy
from sglang_dcp.planner.base import ClusterSpec
from sglang_dcp.planner.profile import load_profile
from sglang_dcp.sim.cost import StepModel
from sglang_dcp.sim.engine import SimOptions, simulate
from sglang_dcp.sim.metrics import FINISHED
from sglang_dcp.sim.workload import Workload

PROFILE = load_profile("deepseek-v3-h200-node8")
CAP = 100_032  # tokens per rank: a 250k prompt must split


def _run(deployment, inp, out, arrival=None, policy="dcp"):
    n = len(inp)
    w = Workload("t", np.asarray(arrival if arrival is not None else np.arange(n) * 1.0, float),
                 np.asarray(inp, np.int64), np.asarray(out, np.int64))
    cl = ClusterSpec.uniform(4, CAP, PROFILE.page_size)
    pol = make_policy(policy, cl, PROFILE)
    model = StepModel(PROFILE, 4, kv_capacity=CAP)
    return simulate(w, pol, model, 4, kv_capacity=cl.kv_capacity,
                    options=SimOptions(deployment=deployment)), pol, model


def test_pd_transfer_follows_the_largest_holder():
    run, pol, model = _run("pd", [250_000], [20])
    ms_per_token = PROFILE.kv_bytes_per_token / (PROFILE.pd_gbps_per_rank * 1e9) * 1e3
    assert run.status[0] == FINISHED
    # the first step waits for the transfer; the largest range bounds it (< the whole prompt)
    land = run.deploy["p99_transfer_ms"]
    assert land < 250_000 * ms_per_token
    assert land >= 250_000 / 4 * ms_per_token - 1e-6
    assert run.first_step_ms[0] == pytest.approx(run.ready_ms[0])  # not counted as a KV wait
    assert run.deploy["shipped_tokens"] == 0


def test_pd_home_lands_everything_on_the_home_then_ships():
    shards, _, _ = _run("pd", [250_000], [20])
    home, _, model = _run("pd-home", [250_000], [20])
    ms_per_token = PROFILE.kv_bytes_per_token / (PROFILE.pd_gbps_per_rank * 1e9) * 1e3
    assert home.deploy["p99_transfer_ms"] == pytest.approx(250_000 * ms_per_token)
    assert home.deploy["p99_transfer_ms"] > shards.deploy["p99_transfer_ms"]
    assert home.deploy["shipped_tokens"] > 0
    assert home.deploy["home_overflow"] == 1  # a 250k prompt cannot land on a 100k rank
    assert home.finish_ms[0] > shards.finish_ms[0]


@pytest.mark.parametrize("deployment", ["pd", "pd-home", "colocated", "decode"])
def test_every_deployment_finishes_everything_and_books_balance(deployment):
    rng = np.random.default_rng(0)
    inp = rng.integers(1000, 200_000, 24)
    out = rng.integers(1, 300, 24)
    run, pol, _ = _run(deployment, inp, out, arrival=np.sort(rng.uniform(0, 5000, 24)))
    assert run.finished == 24 and len(pol) == 0  # the engine checks its KV books at the end
    assert run.decoded_tokens == int((out - 1).sum())


def test_whole_placements_land_the_same_either_way():
    a, _, _ = _run("pd", [50_000, 60_000], [10, 10], policy="total_tokens")
    b, _, _ = _run("pd-home", [50_000, 60_000], [10, 10], policy="total_tokens")
    assert a.deploy["p99_transfer_ms"] == pytest.approx(b.deploy["p99_transfer_ms"])
    assert np.allclose(a.finish_ms, b.finish_ms) and b.deploy["shipped_tokens"] == 0


def test_cli_runs_sessions_in_each_deployment(tmp_path):
    """``--deployment`` and the sessions workloads through the CLI, at one rate."""
    from sglang_dcp.sim.__main__ import main

    for dep in ("colocated", "pd"):
        out = tmp_path / dep
        assert main(["--workload", "sessions-agentic-codex", "--num-requests", "96",
                     "--ranks", "4", "--profile", "deepseek-v3-h200-node8", "--deployment", dep,
                     "--tpot-stat", "mean", "--rate", "0.05", "--no-plots", "--quiet",
                     "--policies", "total_tokens,dcp,dcp:prefix_cache=0",
                     "--out", str(out)]) == 0
        s = __import__("json").loads((out / "summary.json").read_text())
        assert s["search"]["deployment"] == dep
        assert set(s["policies"]) == {"total_tokens", "dcp", "dcp:prefix_cache=0"}
        d = s["details"]
        if dep == "colocated":
            assert d["dcp"]["deploy"]["cached_tokens"] > 0
            assert d["dcp:prefix_cache=0"]["deploy"]["cached_tokens"] == 0
        else:
            assert d["dcp"]["deploy"]["p99_transfer_ms"] > 0


def test_transfer_time_scales_with_the_bandwidth():
    n = [250_000]
    w = Workload("t", np.zeros(1), np.asarray(n, np.int64), np.asarray([20], np.int64))
    cl = ClusterSpec.uniform(4, CAP, PROFILE.page_size)
    got = []
    for gbps in (PROFILE.pd_gbps_per_rank, 2 * PROFILE.pd_gbps_per_rank):
        run = simulate(w, make_policy("dcp", cl, PROFILE), StepModel(PROFILE, 4, kv_capacity=CAP),
                       4, kv_capacity=cl.kv_capacity,
                       options=SimOptions(deployment="pd", pd_gbps=gbps))
        got.append(run.deploy["p99_transfer_ms"])
    assert got[0] == pytest.approx(2 * got[1])


def test_the_pd_bandwidth_is_a_profile_coefficient_with_provenance(tmp_path):
    """Every shipped profile carries ``pd_gbps_per_rank`` with its arithmetic; a profile without
    it refuses a PD run with the fix in the message, and the JSON form round-trips it."""
    from sglang_dcp.planner.profile_io import available_profiles
    from sglang_dcp.sim.deploy import Deployment

    for name in available_profiles():
        p = load_profile(name)
        assert p.pd_gbps_per_rank and "pd_gbps_per_rank" in p.provenance["arithmetic"], name
        assert load_profile(_dump(tmp_path, p.to_dict())).pd_gbps_per_rank == p.pd_gbps_per_rank
    data = PROFILE.to_dict()
    del data["pd_gbps_per_rank"]
    bare = load_profile(_dump(tmp_path, data))
    assert bare.pd_gbps_per_rank is None and "pd_gbps_per_rank" not in bare.to_dict()
    model = StepModel(bare, 4, kv_capacity=CAP)
    pol = make_policy("total_tokens", ClusterSpec.uniform(4, CAP, bare.page_size), bare)
    w = Workload("t", np.zeros(1), np.asarray([1000], np.int64), np.asarray([8], np.int64))
    with pytest.raises(ValueError, match="no pd_gbps_per_rank.*--pd-gbps"):
        Deployment("pd", pol, model, w)
    Deployment("decode", pol, model, w)  # only PD needs it
    data["pd_gbps_per_rank"] = 0
    with pytest.raises(ValueError, match="'pd_gbps_per_rank' must be a number > 0"):
        load_profile(_dump(tmp_path, data))


def _dump(tmp_path, data) -> str:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return str(path)
