"""The lockstep event loop: invariants, a hand-computed case, fast forward, determinism."""

import numpy as np
import pytest

from sglang_dcp.planner import make_policy
from sglang_dcp.planner.base import ClusterSpec
from sglang_dcp.planner.profile import load_profile
from sglang_dcp.sim.cost import StepModel
from sglang_dcp.sim.engine import SimOptions, simulate
from sglang_dcp.sim.metrics import FINISHED, REJECTED, imbalance
from sglang_dcp.sim.workload import Workload, synthetic

PROFILE = load_profile("deepseek-v3-h200")
POLICIES = ("round_robin", "total_tokens", "uniform", "dcp")


def _run(workload, policy="round_robin", ranks=4, capacity=None, **opts):
    cluster = ClusterSpec.uniform(ranks, capacity or PROFILE.kv_capacity_tokens, PROFILE.page_size)
    extra = {"rebalance_threshold": 1.25} if policy == "dcp" else {}  # exercise migrations
    pol = make_policy(policy, cluster, PROFILE, **extra)
    run = simulate(workload, pol, StepModel(PROFILE, ranks), ranks,
                   kv_capacity=cluster.kv_capacity, options=SimOptions(**opts))
    return run, pol


def _workload(inp, out, arrival=None):
    n = len(inp)
    return Workload("t", np.asarray(arrival if arrival is not None else [0.0] * n, float),
                    np.asarray(inp, np.int64), np.asarray(out, np.int64))


def test_step_model_matches_profile():
    rng = np.random.default_rng(0)
    model = StepModel(PROFILE, 8, exchange_wire="items")  # per item: CostProfile.step_time_us
    for _ in range(20):
        batch = rng.integers(0, 200, 8)
        gin, gout = rng.integers(0, 5, 8) * rng.integers(0, 2), rng.integers(0, 5, 8)
        kv = rng.integers(0, 800_000, (3, 8)).astype(float)
        model.set_loads(batch, gin, gout)
        got = model.step_ms(kv)
        for k in range(3):
            want = PROFILE.step_time_us(kv[k].tolist(), (batch + gin).tolist(), batch.tolist(),
                                        gin.tolist(), gout.tolist()) * 1e-3
            assert got[k] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("delay", ["shift", "replay"])
def test_one_rank_one_request_by_hand(delay):
    inp, out = 10_000, 101
    run, _ = _run(_workload([inp], [out], [5.0]), ranks=1, prefill_delay=delay)
    p = PROFILE
    # Step k (k = 0..out-2) sees kv = inp + k, one item, batch 1, no guests (one rank).
    kv_mean = inp + (out - 2) / 2
    step_us = (p.attn_us_fixed + p.attn_us_per_kv_token * kv_mean + p.attn_us_per_item
               + max(p.compute_us_floor, p.compute_us_per_token) + p.moe_us_fixed
               + p.moe_us_per_token)
    prefill_ms = (p.prefill_us_per_token * inp + p.prefill_us_per_token_sq * inp**2) / 1e3
    assert run.tpot_ms[0] == pytest.approx(step_us / 1e3, rel=1e-9)
    # shift: it reaches the decode rank at its trace time; replay: its prefill later
    assert run.first_step_ms[0] == pytest.approx(5.0 + (prefill_ms if delay == "replay" else 0))
    assert run.latency_ms[0] == pytest.approx(prefill_ms + (out - 1) * step_us / 1e3, rel=1e-9)
    assert run.ttft_ms[0] == pytest.approx(prefill_ms)
    assert run.num_steps == out - 1 and run.decoded_tokens == out - 1
    assert run.kv_imbalance == pytest.approx(1.0) and run.batch_imbalance == pytest.approx(1.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_invariants(policy):
    w = synthetic("tiny", seed=1)
    w = w.at_rate(w.rate_rps * 8)  # overload a small cluster so requests wait for KV
    run, pol = _run(w, policy, ranks=4, capacity=65536, record=True)
    assert np.all((run.status == FINISHED) | (run.status == REJECTED))  # none lost
    assert run.finished + run.rejected == len(w)
    fin = run.status == FINISHED
    # No token lost: the cluster decoded exactly the tokens the finished requests needed.
    assert run.decoded_tokens == int(np.sum(w.output_len[fin] - 1))
    assert np.all(run.ready_ms >= run.arrival_ms)
    assert np.all(run.first_step_ms[fin] >= run.ready_ms[fin] - 1e-9)
    assert np.all(run.finish_ms[fin] >= run.first_step_ms[fin])
    assert np.all(np.diff(run.series.t_ms) > 0)  # time is monotonic
    assert np.all(np.concatenate(run.series.step_ms) > 0)
    assert np.max(run.queue_ms) > 0  # the overload made someone wait
    assert sum(pol.kv_tokens()) == 0 and sum(pol.batch_sizes()) == 0  # all KV freed
    assert run.kv_imbalance >= 1.0 and run.batch_imbalance >= 1.0


def test_rejects_what_cannot_fit_and_serves_the_rest():
    # 2 ranks x 4096 tokens: 20k tokens fit nowhere; the rest wait their turn (head of line).
    w = _workload([20_000, 3000, 3000, 3000], [10, 50, 50, 50], [0, 1, 2, 3])
    run, _ = _run(w, "round_robin", ranks=2, capacity=4096)
    assert run.status.tolist() == [REJECTED, FINISHED, FINISHED, FINISHED]
    assert sum(run.reject_reasons.values()) == 1
    assert run.queue_ms.max() > 0  # the third 3000-token request waited for KV


@pytest.mark.parametrize("policy,migration", [("round_robin", "background"),
                                              ("dcp", "background"), ("dcp", "stall")])
def test_fast_forward_equals_single_stepping(policy, migration):
    w = synthetic("longtail", seed=2, num_requests=40)
    w = w.at_rate(w.rate_rps * 4)
    opts = dict(rebalance_every_ms=200, rebalance_max_tokens=32768, migration=migration)
    fast, _ = _run(w, policy, ranks=4, capacity=262144, **opts)
    slow, _ = _run(w, policy, ranks=4, capacity=262144, fast_forward=False, **opts)
    if policy == "dcp":
        assert fast.migrated_tokens > 0  # the case exercises migrations
        assert (fast.migration_stall_ms > 0) == (migration == "stall")
    assert fast.num_steps == slow.num_steps
    assert fast.decoded_tokens == slow.decoded_tokens
    assert np.array_equal(fast.status, slow.status)
    np.testing.assert_allclose(fast.finish_ms, slow.finish_ms, rtol=1e-9)
    np.testing.assert_allclose(fast.first_step_ms, slow.first_step_ms, rtol=1e-9)
    assert fast.kv_imbalance == pytest.approx(slow.kv_imbalance, rel=1e-9)
    assert fast.batch_imbalance == pytest.approx(slow.batch_imbalance, rel=1e-9)


def test_deterministic():
    a, _ = _run(synthetic("tiny", seed=5), "dcp")
    b, _ = _run(synthetic("tiny", seed=5), "dcp")
    c, _ = _run(synthetic("tiny", seed=6), "dcp")
    np.testing.assert_array_equal(a.finish_ms, b.finish_ms)
    assert a.kv_imbalance == b.kv_imbalance
    assert not np.array_equal(a.finish_ms, c.finish_ms)


def test_imbalance_definition():
    assert imbalance(np.array([0.0, 0.0])) == 1.0  # all idle: nothing to balance
    assert imbalance(np.array([2.0, 2.0])) == 1.0
    assert imbalance(np.array([3.0, 1.0])) == 1.5
    np.testing.assert_allclose(imbalance(np.array([[4.0, 0.0], [1.0, 1.0]])), [2.0, 1.0])


def test_guest_out_matches_planner():
    """The loop charges each home the remote shards the planner reports (Policy.guest_out)."""
    w = synthetic("longtail", seed=0, num_requests=150)
    cluster = ClusterSpec.uniform(4, 262144, PROFILE.page_size)
    pol = make_policy("dcp", cluster, PROFILE)
    model = StepModel(PROFILE, 4)
    seen = []
    orig = model.set_loads

    def spy(batch, gin, gout, near, busiest_pair=0, cross=True):
        assert list(gin) == pol.guest_items()
        assert cross == pol.cross_pairs()
        assert [int(x) for x in gout] == pol.guest_out()
        assert list(near) == pol.guest_near()
        assert busiest_pair == pol.busiest_pair()
        assert (busiest_pair > 0) == (sum(gin) > 0)
        seen.append(sum(gin))
        orig(batch, gin, gout, near, busiest_pair, cross)

    model.set_loads = spy
    simulate(w.at_rate(w.rate_rps * 4), pol, model, 4, kv_capacity=cluster.kv_capacity,
             options=SimOptions(rebalance_every_ms=500, rebalance_max_tokens=65536))
    assert max(seen) > 0  # dcp did split some requests


def test_policy_labels_carry_planner_options():
    from sglang_dcp.sim.experiment import parse_policy

    assert parse_policy("dcp") == ("dcp", {})
    assert parse_policy("dcp:home_rule=step:max_degree=2:min_gain_us=1.5") == (
        "dcp", {"home_rule": "step", "max_degree": 2, "min_gain_us": 1.5})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_policy("dcp:max_degree")


def test_fluid_estimate_is_a_fixed_point():
    from sglang_dcp.sim.bound import balanced_step_ms, fluid_max_rate, fluid_step_ms

    w = synthetic("longtail", seed=0, num_requests=300)
    idle = balanced_step_ms(PROFILE, 16, 0.0, 0.0)
    assert fluid_step_ms(w, PROFILE, 16, 1e-6) == pytest.approx(idle, rel=1e-6)
    assert fluid_step_ms(w, PROFILE, 16, 10.0) < fluid_step_ms(w, PROFILE, 16, 20.0)
    est = fluid_max_rate(w, PROFILE, 16, slo_ms=50.0, kv_capacity=PROFILE.kv_capacity_tokens)
    assert est["rate_rps"] > 0 and est["step_ms"] <= 50.0 + 1e-6
    assert est["limited_by"] in ("step time", "KV capacity")


def test_bucketed_exchange_charges_every_peer_the_busiest_pairs_bucket():
    """``exchange_wire="bucketed"`` (the default): each rank pays the server's padded rows
    (every peer one bucket of the busiest pair, ``wire.padded_items``), whatever its own guest
    items, and merges its real remote partials; with no split request both charges agree."""
    from sglang_dcp.exchange.wire import padded_items

    items, bucketed = StepModel(PROFILE, 8, exchange_wire="items"), StepModel(PROFILE, 8)
    b, gi, go = [4] * 8, [0, 3, 0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0, 0, 0]
    kv = np.zeros((1, 8))
    for m in (items, bucketed):
        m.set_loads(b, [0] * 8, [0] * 8, [0] * 8, busiest_pair=0)
    assert items.step_ms(kv)[0] == bucketed.step_ms(kv)[0]
    for m in (items, bucketed):
        m.set_loads(b, gi, go, [0] * 8, busiest_pair=3)
    rows = padded_items(8, 3, 16)  # 7 peers x bucket 4
    p = PROFILE  # one node: every peer near
    wire = p.exchange_us(rows, rows, 2 * rows)
    want = max(p.rank_time_us(0.0, b[r] + gi[r], b[r]) + p.merge_us(go[r]) + wire
               for r in range(8)) + p.moe_us(4) + p.exchange_us_fixed
    assert abs(bucketed.step_ms(kv)[0] * 1e3 - want) < 1e-6
    assert bucketed.step_ms(kv)[0] > items.step_ms(kv)[0]


def test_shifted_prefill_does_not_dilute_a_finite_trace():
    """Prefills longer than the trace's arrival span: replayed, they spread the requests over
    the prefill times (the decode rank sees them one at a time); shifted, the decode rank sees
    the trace's burst, as an endless trace at that rate would keep it loaded."""
    inp = [200_000, 1_000] * 4  # long prefills (tens of seconds) interleaved with short ones
    w = _workload(inp, [50] * 8, [float(i) for i in range(8)])  # 8 arrivals in 7 ms
    shift, _ = _run(w, ranks=1, prefill_delay="shift")
    replay, _ = _run(w, ranks=1, prefill_delay="replay")
    assert np.array_equal(shift.ready_ms, w.arrival_ms)
    assert np.ptp(replay.ready_ms) > 1000 * np.ptp(w.arrival_ms)
    assert shift.batch_imbalance == replay.batch_imbalance == pytest.approx(1.0)
    # the burst decodes together: each step carries more requests, so TPOT is longer
    assert np.median(shift.tpot_ms) > np.median(replay.tpot_ms)
    assert np.allclose(np.sort(shift.latency_ms - shift.ttft_ms),
                       np.sort(shift.finish_ms - shift.first_step_ms))


def test_prefill_delay_is_checked():
    with pytest.raises(ValueError, match="prefill_delay must be one of"):
        SimOptions(prefill_delay="later")


def test_a_timed_wait_is_retried_on_time_not_at_the_next_finish():
    """A refusal that names its retry time (``Rejection.retry_at_ms``) is retried then, as the
    server's queue polls (``sglang/wait_queue.py``), not only when KV frees."""
    from sglang_dcp.types import Rejection

    cluster = ClusterSpec.uniform(2, PROFILE.kv_capacity_tokens, PROFILE.page_size)
    base = type(make_policy("uniform", cluster, PROFILE))

    class TimedGate(base):
        """``uniform``, but request "1" is refused until 500 ms on the policy's clock."""

        now = 0.0
        tries = 0

        def on_time(self, now_ms, step):
            self.now = now_ms
            super().on_time(now_ms, step)

        def admit(self, request, home_rank=None):
            if request.rid == "1":
                self.tries += 1
                if self.now < 500.0:
                    return Rejection("1", "later", retryable=True, retry_at_ms=500.0)
            return super().admit(request, home_rank)

    pol = TimedGate(cluster)
    # request 0 decodes for ~20 s; request 1 is ready at 10 ms and may start at 500 ms
    w = _workload([1000, 1000], [600, 5], [0.0, 10.0])
    run = simulate(w, pol, StepModel(PROFILE, 2), 2, kv_capacity=cluster.kv_capacity)
    assert list(run.status) == [FINISHED, FINISHED]
    assert 500.0 <= run.first_step_ms[1] - run.arrival_ms[0] < 600.0, run.first_step_ms
    assert run.first_step_ms[1] < run.finish_ms[0]
    assert pol.tries == 2  # on arrival, then once on time (no retry every step meanwhile)
