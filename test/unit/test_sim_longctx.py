"""Long-context pieces of the simulator: published mixes, the stale-load SGLang baseline, the
DP controller's first-fit queue, topology-aware exchange, and the pooled bound."""

import numpy as np
import pytest

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.sim.bound import fluid_max_rate
from sglang_dcp.sim.cost import StepModel
from sglang_dcp.sim.engine import SimOptions, simulate
from sglang_dcp.sim.experiment import Experiment
from sglang_dcp.sim.metrics import pct
from sglang_dcp.sim.mixes import MIXES
from sglang_dcp.sim.search import SearchSpec
from sglang_dcp.sim.workload import Workload, make_workload, workload_names
from sglang_dcp.types import Placement, Request

NODE8 = load_profile("deepseek-v3-h200-node8")


@pytest.mark.parametrize("name,above", [
    ("agentic-claude", (0.874, 0.724, 0.485, 0.237)),
    ("agentic-codex", (0.897, 0.759, 0.422, 0.0)),
])
def test_agentic_mixes_match_tracelab_shares(name, above):
    w = make_workload(name, seed=3, num_requests=20_000)
    # the prompt is prefix + appended tokens, so each share above an edge is a bit higher
    for edge, share in zip((32, 64, 128, 256), above):
        got = float(np.mean(w.input_len > edge * 1024))
        assert share - 0.01 <= got <= share + 0.04, (edge, got, share)
    assert 480 <= w.output_len.mean() <= 570  # TraceLab: 523 output tokens per step
    assert w.meta["source"].startswith("TraceLab")


def test_mixes_are_seeded_and_bimodal_is_two_humps():
    a, b = make_workload("bimodal", 1), make_workload("bimodal", 1)
    assert np.array_equal(a.input_len, b.input_len) and np.array_equal(a.arrival_ms, b.arrival_ms)
    assert not np.array_equal(a.input_len, make_workload("bimodal", 2).input_len)
    long = a.input_len >= 64 * 1024
    assert np.all(a.input_len[~long] < 2048) and np.all(a.input_len[long] < 128 * 1024)
    assert 0.15 < long.mean() < 0.25
    assert set(MIXES) <= set(workload_names())
    with pytest.raises(KeyError, match="unknown workload 'nope'"):
        make_workload("nope")


def test_total_tokens_sglang_routes_on_snapshots():
    """Between snapshots only the speculative +prompt increments spread a burst; a finished
    request keeps its rank looking busy until the next snapshot (every 15 steps)."""
    c = ClusterSpec.uniform(2, 64 * 1000, 64)
    p = make_policy("total_tokens_sglang", c)
    p.on_time(0.0, 0)
    homes = [p.admit(Request(f"r{i}", 1000, 10)).home_rank for i in range(4)]
    assert homes == [0, 1, 0, 1]
    p.admit(Request("big", 20_000, 10))  # rank 0 (tie on tokens and requests)
    p.finish("big")
    p.on_time(10.0, 14)  # no new snapshot yet: rank 0 still looks loaded
    assert p.admit(Request("x", 100, 1)).home_rank == 1
    p.on_time(20.0, 15)  # new snapshot: exact loads again
    exact = make_policy("total_tokens", c)
    for i in range(4):
        exact.admit(Request(f"r{i}", 1000, 10))
    exact.admit(Request("x", 100, 1), home_rank=1)
    assert p.admit(Request("y", 100, 1)).home_rank == exact.admit(Request("y", 100, 1)).home_rank


def _w(inp, out, arrival):
    return Workload("t", np.asarray(arrival, float), np.asarray(inp, np.int64),
                    np.asarray(out, np.int64))


@pytest.mark.parametrize("bypass,small_waits", [(16, False), (None, False), (0, True)])
def test_first_fit_queue_passes_a_blocked_long_request(bypass, small_waits):
    """A long request waiting for KV does not block a short one behind it (first fit, as the
    DP controller's queue); with queue_max_bypass=0 arrival order is strict."""
    prof = load_profile("deepseek-v3-h200")
    c = ClusterSpec.uniform(2, 64 * 100, 64)
    # r0, r1 fill most of the KV for a while; r2 (long) must wait; r3 (short) fits now
    w = _w([4000, 4000, 6000, 300], [400, 400, 10, 10], [0, 0, 1, 500])  # ready in this order
    pol = make_policy("dcp", c, prof, max_degree=1)
    run = simulate(w, pol, StepModel(prof, 2), 2, kv_capacity=c.kv_capacity,
                   options=SimOptions(queue_max_bypass=bypass))
    assert run.queue_ms[2] > 1000  # the long one waited for a finish either way
    assert (run.queue_ms[3] > 1000) == small_waits


def test_tokens_bound_lets_a_long_waiter_be_passed_longer():
    """queue_bypass_tokens (issue 27 candidate, off by default): a waiter starves once passed
    ``bypass`` times and by requests holding ``tokens`` x its own KV, not after the count."""
    from sglang_dcp.sim.queues import GLOBAL, WaitQueues

    size = [1000, 100, 100, 100, 100]  # 0 waits; 1-4 are admitted ahead of it
    for tokens, starving_after in [(None, 2), (0.25, 3), (1.0, None)]:
        q = WaitQueues(2, tokens, size)
        q.wait(GLOBAL, 0)
        seen = None
        for i in range(1, 5):
            q.overtaken(i)
            if seen is None and q.starving():
                seen = i
        assert seen == starving_after, (tokens, seen)


def test_intranode_items_are_cheaper_and_preferred():
    p = NODE8
    assert p.exchange_us(1, 1, near=2) < p.exchange_us(1, 1)
    assert p.item_exchange_us(True) == p.exchange_us_per_item_intranode
    c = ClusterSpec.uniform(4, 64 * 1000, 64, ranks_per_node=2)
    # per item (bucketed, every peer gets the same padded rows: no rank is nearer)
    pol = make_policy("dcp", c, p, max_degree=2, split_min_free=0.0, exchange_wire="items")
    for r in range(4):  # equal load everywhere; the request fits no rank whole
        got = pol.admit(Request(f"f{r}", 40_000, 10), home_rank=r)
        assert isinstance(got, Placement)
    got = pol.admit(Request("long", 30_000, 10), home_rank=2)
    assert isinstance(got, Placement) and got.degree == 2
    guest = next(s.rank for s in got.shards if s.rank != 2)
    assert guest == 3  # the same-node rank: same load, cheaper exchange
    assert pol.guest_near()[2] == 1 and pol.guest_near()[3] == 1
    pol.verify()


def test_pooled_bound_shows_the_fluid_bound_ignores_bursts():
    """The fluid bound is a mean-load estimate: with requests this large against the cluster,
    a perfectly packed and balanced cluster (pooled replay, same arrivals) at the fluid rate
    breaks the 2 s KV-wait rule by far. That is why sim.md reports both bounds."""
    w = make_workload("agentic-claude", seed=0, num_requests=600)
    exp = Experiment(w, 8, "deepseek-v3-h200-node8", ("dcp",), SearchSpec(50.0, 2000.0))
    fluid = fluid_max_rate(w, exp.profile, 8, slo_ms=50.0,
                           kv_capacity=exp.cluster.kv_capacity[0])["rate_rps"]
    run = exp.run_pooled(fluid)
    assert pct(run.queue_ms, 99) > 10 * 2000.0
    ok = exp.run_pooled(fluid / 4)  # and the pooled model itself is sane well below it
    assert pct(ok.queue_ms, 99) < 2000.0 and pct(ok.tpot_ms, 99) < 50.0
