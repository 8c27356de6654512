"""dcp's default decision rule: home by predicted step, split only for fit (see planner/dcp.py)."""

import random

import pytest

from sglang_dcp.planner import ClusterSpec, Policy, load_profile, make_policy
from sglang_dcp.types import Placement, Rejection, Request

DS = load_profile("deepseek-v3-h200")
PAGE = 64


def req(i, prompt, new=0):
    return Request(f"r{i}", prompt, new)


def fill(p, rank, tokens, rid):
    got = p.admit(Request(rid, tokens, 0), home_rank=rank)
    assert isinstance(got, Placement) and got.degree == 1
    return got


def test_defaults():
    p = make_policy("dcp", ClusterSpec.uniform(4, 64 * 1024, PAGE), DS)
    assert (p.home_rule, p.split_rule, p.split_min_free) == ("step", "fit", 0.2)
    with pytest.raises(ValueError, match="split_rule"):
        make_policy("dcp", ClusterSpec.uniform(4, 64 * 1024, PAGE), DS, split_rule="nope")
    with pytest.raises(ValueError, match="split_min_free"):
        make_policy("dcp", ClusterSpec.uniform(4, 64 * 1024, PAGE), DS, split_min_free=1.5)


def test_long_request_that_fits_stays_whole_on_the_fastest_rank():
    c = ClusterSpec.uniform(8, DS.kv_capacity_tokens, PAGE)
    p = make_policy("dcp", c, DS)
    for r in range(8):
        if r != 5:
            fill(p, r, 200_000, f"f{r}")
    got = p.admit(req(0, 400_000, 1000))  # 10 ms of attention: a split would lower the step now
    assert got.degree == 1 and got.home_rank == 5  # but it fits: whole, on the idle rank
    assert sum(p.guest_items()) == 0
    p.verify()


def test_request_larger_than_any_free_kv_is_split_when_kv_is_fragmented():
    cap = 64 * 1000  # 64,000 tokens per rank
    c = ClusterSpec.uniform(4, cap, PAGE)
    p = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 10)
    for r in range(4):  # each rank half full: 50% of the cluster free, no rank has 40k free
        fill(p, r, 32_000, f"f{r}")
    got = p.admit(req(0, 40_000, 100))
    assert isinstance(got, Placement) and got.degree > 1
    assert max(p.kv_tokens()) <= cap
    assert sum(p.guest_out()) == sum(p.guest_items()) == got.degree - 1
    p.verify()


def test_request_waits_instead_of_splitting_when_the_cluster_is_kv_bound():
    cap = 64 * 1000
    c = ClusterSpec.uniform(4, cap, PAGE)
    p = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 10)
    for r in range(4):  # 85% full: 9,600 free per rank, 38,400 in all
        fill(p, r, 54_400, f"f{r}")
    rej = p.admit(req(0, 11_000, 100))  # fits the cluster's free KV only in pieces
    assert isinstance(rej, Rejection) and rej.retryable and "waits" in rej.reason
    assert sum(p.guest_items()) == 0
    # the same request splits once the gate allows it (split_min_free=0: always split for fit)
    q = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 10, split_min_free=0.0)
    for r in range(4):
        fill(q, r, 54_400, f"f{r}")
    assert q.admit(req(0, 11_000, 100)).degree > 1
    q.verify()


def test_request_large_against_a_rank_splits_even_when_kv_bound():
    """>= split_min_free of a rank's capacity: waiting for one rank to free it takes long."""
    cap = 64 * 1000
    c = ClusterSpec.uniform(4, cap, PAGE)
    p = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 10)
    for r in range(4):  # 85% full, as above
        fill(p, r, 54_400, f"f{r}")
    got = p.admit(req(0, 20_000, 100))  # 31% of a rank
    assert isinstance(got, Placement) and got.degree > 1
    p.verify()


def test_step_budget_holds_back_a_split_the_step_cannot_afford():
    """With step_slo_ms, a split whose exchange would push the predicted step over the budget
    waits; with the budget loose enough it is placed; an empty cluster always admits."""
    cap = 64 * 1000
    c = ClusterSpec.uniform(4, cap, PAGE)
    tight = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 10, step_slo_ms=1.0,
                        step_gate="split", split_cost_k=0)  # the gate, not the fit rule
    assert tight.admit(req(9, 100_000, 100)).degree > 1  # empty cluster: nothing to wait for
    tight.finish("r9")
    for r in range(4):
        fill(tight, r, 32_000, f"f{r}")
    rej = tight.admit(req(0, 40_000, 100))
    assert isinstance(rej, Rejection) and rej.retryable and "step budget" in rej.reason
    loose = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 10, step_slo_ms=1e6)
    for r in range(4):
        fill(loose, r, 32_000, f"f{r}")
    got = loose.admit(req(0, 40_000, 100))
    assert isinstance(got, Placement) and got.degree > 1
    # the prediction the gate uses is the profile's step with the plan committed
    pred = loose._predicted_step_us(got.home_rank, [[s.rank, s.start, s.end]
                                                     for s in got.shards[:-1]], 0)
    assert pred > 0
    all_gate = make_policy("dcp", c, DS, step_slo_ms=1.0, step_gate="all")
    fill(all_gate, 0, 1000, "a")
    rej = all_gate.admit(req(1, 1000, 10))  # d = 1, but the step cannot afford any admission
    assert isinstance(rej, Rejection) and rej.retryable
    with pytest.raises(ValueError, match="step_gate"):
        make_policy("dcp", c, DS, step_gate="bogus")


def test_request_larger_than_every_rank_is_always_split():
    cap = 64 * 1000
    c = ClusterSpec.uniform(4, cap, PAGE)
    p = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 10, split_min_free=1.0)
    got = p.admit(req(0, 150_000, 64))  # more than any rank holds: waiting cannot help
    assert isinstance(got, Placement) and got.degree >= 3
    assert max(p.kv_tokens()) <= cap
    rej = p.admit(req(1, 300_000))  # more than the whole cluster
    assert isinstance(rej, Rejection) and not rej.retryable
    p.verify()


def test_short_requests_never_split():
    cap = 64 * 200
    c = ClusterSpec.uniform(4, cap, PAGE)
    p = make_policy("dcp", c, DS)  # break-even shard 8,320 tokens
    for i in range(40):
        got = p.admit(req(i, 3_000 + 17 * i, 50))
        if isinstance(got, Rejection):
            assert got.retryable  # no rank has room: it waits, it is never split
            break
        assert got.degree == 1
    assert sum(p.guest_items()) == 0
    p.verify()


def test_deterministic():
    def run():
        rnd = random.Random(7)
        c = ClusterSpec.uniform(6, 64 * 2000, PAGE)
        p = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 20)
        live, out = [], []
        for i in range(400):
            if live and rnd.random() < 0.4:
                p.finish(live.pop(rnd.randrange(len(live))))
                continue
            got = p.admit(req(i, rnd.choice([200, 3_000, 30_000, 90_000]), rnd.randint(1, 500)))
            out.append(got)
            if isinstance(got, Placement):
                live.append(got.rid)
        p.verify()
        return out, p.kv_tokens(), p.guest_out()

    first = run()
    assert first == run()
    assert any(isinstance(g, Placement) and g.degree > 1 for g in first[0])  # it does split


def test_policy_interface_guest_out_and_waiting_rank():
    assert "guest_out" in Policy.__abstractmethods__
    c = ClusterSpec.uniform(2, 64 * 10, PAGE)
    for name in ("round_robin", "total_tokens", "uniform", "dcp"):
        p = make_policy(name, c, DS)
        assert p.guest_out() == [0, 0] and p.waiting_rank("x") is None
    p = make_policy("total_tokens", c)
    p.admit(req(0, 600))
    p.admit(req(1, 600))
    rej = p.admit(req(2, 600))
    assert isinstance(rej, Rejection) and rej.retryable
    assert p.waiting_rank("r2") == p.waiting()["r2"] and p.waiting_rank("r0") is None
    p.finish("r2")
    assert p.waiting_rank("r2") is None


def test_never_fits_agrees_with_admit_into_an_empty_cluster():
    """A request that ``never_fits`` lets through is placed by an empty cluster (found by the
    DP controller's budget search: 3000 + 968 tokens on 4 x 1024 used to wait forever, the
    guests' page rounding leaving the home one page over its free KV)."""
    c = ClusterSpec.uniform(4, 1024, 64)
    for prompt, new in ((3000, 968), (3000, 1000), (2900, 1060), (1000, 3000), (3100, 900)):
        p = make_policy("dcp", c, DS, max_degree=4, min_shard_tokens=128)
        ok = p.never_fits(req(0, prompt, new)) is None
        got = p.admit(req(0, prompt, new))
        assert ok == isinstance(got, Placement), (prompt, new, got)
        p.verify()


def test_split_for_fit_scales_with_what_starting_the_exchange_costs():
    """With a step budget, a request that fits one rank whole but finds no rank with room waits
    where the first split would tax every step by a large share of the budget (16 ranks:
    fixed + 15 padded rows each way), and splits where that share is small or the rule is off
    (``split_cost_k=0``): the share the fit rule asks for is ``k x start / budget``."""
    cap = 64 * 1000
    c = ClusterSpec.uniform(16, cap, PAGE)

    def kv_bound(**kw):
        p = make_policy("dcp", c, DS, min_shard_tokens=PAGE * 10, step_slo_ms=1e3, **kw)
        for r in range(16):  # 85% full, as above
            fill(p, r, 54_400, f"f{r}")
        return p

    start = DS.exchange_us_fixed + kv_bound().wire_us(1)  # 2.4 ms + 15 rows each way
    tax = kv_bound(split_cost_k=1e6 / start * 0.5)  # share 0.5: a 31% request waits
    assert tax._split_free_share() == pytest.approx(0.5)
    rej = tax.admit(req(0, 20_000, 100))
    assert isinstance(rej, Rejection) and rej.retryable and "50% of the cluster" in rej.reason
    assert sum(tax.guest_items()) == 0
    for off in (kv_bound(split_cost_k=0), kv_bound(split_cost_k=1e6 / start * 0.1)):
        got = off.admit(req(0, 20_000, 100))  # share 0.2 (split_min_free): it splits
        assert isinstance(got, Placement) and got.degree > 1
        off.verify()
    with pytest.raises(ValueError, match="split_cost_k"):
        make_policy("dcp", c, DS, split_cost_k=-1)
    # without a budget the rule has nothing to scale by: split_min_free as before
    assert make_policy("dcp", c, DS)._split_free_share() == 0.2


def test_live_split_only_while_the_budget_is_quiet():
    """live_quiet_ms (issue 27): the fit rule splits for balance too while a guest exists, the
    predicted step is within the budget and nothing was refused for the budget that long."""
    c = ClusterSpec.uniform(4, 64 * 1000, 64)
    prof = load_profile("deepseek-v3-h200")
    for quiet, refused_ms, live in [(600_000.0, None, True), (600_000.0, 1.0, False),
                                    (600_000.0, -700_000.0, True), (0, None, False)]:
        p = make_policy("dcp", c, prof, step_slo_ms=1e6, live_quiet_ms=quiet)
        assert not p._live_split()  # no guest: the exchange is not live
        p.num_guest_items = 1
        p._budget_refused_ms = refused_ms
        assert p._live_split() == live, (quiet, refused_ms)
