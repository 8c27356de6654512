"""The bucketed exchange as the planner predicts it and the simulator charges it: one function
(``planner.wire_cost.bucketed_exchange_us`` over ``exchange.wire.padded_items``)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_dcp.exchange.wire import bucket_for, padded_items, scope_peers
from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.planner.wire_cost import bucketed_exchange_us, near_peers
from sglang_dcp.sim.cost import StepModel
from sglang_dcp.types import Placement, Request

DS = load_profile("deepseek-v3-h200")
KIMI = load_profile("kimi-k2-h200-ep32")


def test_wire_is_the_padded_rows_at_the_profile_rates():
    assert bucketed_exchange_us(DS, 16, 0) == 0.0
    for b in (1, 2, 3, 5, 16, 17, 40):
        rows = padded_items(16, b, 16)
        assert bucketed_exchange_us(DS, 16, b) == pytest.approx(DS.exchange_us(rows, rows))
    # a bucket is a bucket: 3 and 4 queries on the busiest pair ship the same rows
    assert bucketed_exchange_us(DS, 16, 3) == bucketed_exchange_us(DS, 16, 4)
    assert bucketed_exchange_us(DS, 16, 5) > bucketed_exchange_us(DS, 16, 4)
    # with an intranode rate, the peers on the rank's node are cheaper (7 of 31 on 32 ranks)
    rows = padded_items(32, 1, 16)
    assert bucketed_exchange_us(KIMI, 32, 1) == pytest.approx(
        KIMI.exchange_us(rows, rows, 2 * 7))
    assert near_peers(12, 8) == 3 and near_peers(16, 8) == 7 and near_peers(4, 8) == 3


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 16), rpn=st.sampled_from([1, 2, 4, 8]), cap=st.sampled_from([2, 16]),
       wire=st.sampled_from(["scoped", "bucketed"]),
       reqs=st.lists(st.tuples(st.integers(10_000, 300_000), st.integers(0, 4_000)),
                     min_size=1, max_size=30),
       finish=st.lists(st.integers(0, 29), max_size=10))
def test_planner_prediction_is_what_the_simulator_charges(n, rpn, cap, wire, reqs, finish):
    """At the reserved KV, ``predicted_step_us`` equals ``StepModel.step_ms`` with the planner's
    loads: the planner decides with the bytes the simulator (and the server) ship."""
    cl = ClusterSpec.uniform(n, 200_000, DS.page_size, ranks_per_node=rpn)
    pol = make_policy("dcp", cl, DS, wire_capacity=cap, exchange_wire=wire)
    model = StepModel(DS, n, ranks_per_node=rpn, exchange_wire=wire)
    for i, (p, o) in enumerate(reqs):
        pol.admit(Request(f"r{i}", p, o))
    for i in finish:
        if f"r{i}" in pol:
            pol.finish(f"r{i}")
    pol.verify()
    if cap != 16:  # the simulator ships at the server's default capacity
        return
    model.set_loads(pol.batch_sizes(), pol.guest_items(), pol.guest_out(), pol.guest_near(),
                    busiest_pair=pol.busiest_pair(), cross=pol.cross_pairs())
    got = model.step_ms(np.asarray([pol.kv_tokens()], float))[0] * 1e3
    assert got == pytest.approx(pol.predicted_step_us(), rel=1e-9)


def _split_cluster(wire):
    """4 ranks too small for the requests: each one splits; homes pinned to rank 0."""
    cl = ClusterSpec.uniform(4, 120_000, DS.page_size, ranks_per_node=8)
    return make_policy("dcp", cl, DS, exchange_wire=wire, max_degree=2)


def test_guests_go_to_pairs_within_the_bucket():
    """Bucketed: a second split request homed on rank 0 takes a holder whose pair with rank 0
    is still empty (the busiest pair stays 1, no rank ships more), not the least loaded one."""
    pol = _split_cluster("bucketed")
    first = pol.admit(Request("a", 150_000, 100), home_rank=0)
    assert isinstance(first, Placement) and first.degree == 2
    g1 = next(s.rank for s in first.shards if s.rank != 0)
    pol.admit(Request("b", 30_000, 100), home_rank=g1 % 3 + 1)  # load another rank a little
    second = pol.admit(Request("c", 150_000, 100), home_rank=0)
    assert isinstance(second, Placement) and second.degree == 2
    g2 = next(s.rank for s in second.shards if s.rank != 0)
    assert g2 != g1 and pol.busiest_pair() == 1
    pol.verify()


def test_the_budget_sees_the_bucket_a_split_leads_to():
    """A split whose pair outgrows the bucket adds the next bucket's rows to every rank's
    predicted step; the budget gate prices it (``_predicted_step_us``)."""
    pol = _split_cluster("bucketed")
    pol.admit(Request("a", 150_000, 100), home_rank=0)
    b = pol.busiest_pair()
    assert b == 1
    one, two = pol.wire_us(1), pol.wire_us(2)
    assert two > one > 0 and bucket_for(2, 16) == 2
    row = pol.pairs[0]
    g_free = next(g for g in range(1, 4) if row[g] == 0)
    g_busy = next(g for g in range(1, 4) if row[g] == 1)
    base = pol._predicted_step_us(0, [[g_free, 0, 64]], 64)
    worse = pol._predicted_step_us(0, [[g_busy, 0, 64]], 64)
    assert worse - base == pytest.approx(two - one, rel=1e-9)
    items = _split_cluster("items")
    items.admit(Request("a", 150_000, 100), home_rank=0)
    assert items.wire_us(5) == 0.0


def test_rejoin_brings_the_last_split_home_when_that_lowers_the_step():
    """``rejoin``: once the home has room again, the only split request's guest shard moves
    home (no guest left: the fixed exchange and the wire are gone from every step)."""
    cl = ClusterSpec.uniform(4, 120_000, DS.page_size, ranks_per_node=8)
    pol = make_policy("dcp", cl, DS, max_degree=2, step_slo_ms=1e6, rejoin=True)
    assert isinstance(pol.admit(Request("f", 60_000, 10), home_rank=0), Placement)
    split = pol.admit(Request("s", 100_000, 10), home_rank=0)
    assert isinstance(split, Placement) and split.degree == 2
    before = pol.predicted_step_us()
    pol.finish("f")
    moves = pol.rebalance(10**6)
    assert moves and all(m.dst == 0 for m in moves) and pol.placement("s").degree == 1
    assert pol.busiest_pair() == 0 and pol.predicted_step_us() < before
    pol.verify()


def test_a_node_scoped_step_ships_only_to_the_nodes_peers():
    """``scoped``: while no pair crosses nodes every rank ships its node's other ranks one
    bucket, all at the intranode rate; one pair across nodes ships every rank (``bucketed``)."""
    assert scope_peers(16, 8, cross=False) == 7 and scope_peers(16, 8, cross=True) == 15
    assert scope_peers(8, 8, cross=False) == 7 and scope_peers(12, 8, cross=False) == 7
    for b in (1, 3, 16, 40):
        rows = padded_items(16, b, 16, peers=7)
        assert rows == padded_items(8, b, 16)
        assert bucketed_exchange_us(DS, 16, b, cross=False) == pytest.approx(
            DS.exchange_us(rows, rows, 2 * rows))
        assert bucketed_exchange_us(DS, 16, b, cross=True) == bucketed_exchange_us(DS, 16, b)
    assert bucketed_exchange_us(DS, 16, 1, cross=False) < bucketed_exchange_us(DS, 16, 1) / 2
    m = StepModel(DS, 16, exchange_wire="scoped")
    kv = np.zeros((1, 16))
    m.set_loads([1] * 16, [1] + [0] * 15, [0, 1] + [0] * 14, busiest_pair=1, cross=False)
    node = m.step_ms(kv)[0]
    m.set_loads([1] * 16, [1] + [0] * 15, [0, 1] + [0] * 14, busiest_pair=1, cross=True)
    assert m.step_ms(kv)[0] - node == pytest.approx(
        (bucketed_exchange_us(DS, 16, 1) - bucketed_exchange_us(DS, 16, 1, cross=False)) * 1e-3)
    flat = StepModel(DS, 16, exchange_wire="bucketed")
    flat.set_loads([1] * 16, [1] + [0] * 15, [0, 1] + [0] * 14, busiest_pair=1, cross=False)
    assert flat.step_ms(kv)[0] == pytest.approx(m.step_ms(kv)[0])  # unscoped: always all


def test_scoped_guests_stay_on_the_homes_node_and_cross_only_when_they_must():
    """Two nodes of 2 ranks: a split homed on rank 0 takes rank 1 (its node, the cheap scope);
    once rank 1 is full the next split crosses to the other node, and the books say so."""
    cl = ClusterSpec.uniform(4, 120_000, DS.page_size, ranks_per_node=2)
    pol = make_policy("dcp", cl, DS, max_degree=2)
    assert pol.exchange_wire == "scoped"
    first = pol.admit(Request("a", 150_000, 100), home_rank=0)
    assert isinstance(first, Placement) and {s.rank for s in first.shards} == {0, 1}
    assert pol.wire_state() == (1, False)
    assert pol.predicted_step_us() == pytest.approx(
        max(pol.rank_times()) + DS.moe_us(1) + DS.exchange_us_fixed + pol.wire_us(1, False))
    room = pol.cap[1] - pol.kv[1]
    fill = pol.admit(Request("fill", room - 100, 0), home_rank=1)  # rank 1 has no room left
    assert isinstance(fill, Placement) and fill.degree == 1
    second = pol.admit(Request("b", 150_000, 100), home_rank=0)
    assert isinstance(second, Placement) and second.degree == 2
    assert {s.rank for s in second.shards} - {0} <= {2, 3} and pol.cross_pairs()
    pol.verify()
    pol.finish("b")
    assert pol.wire_state() == (1, False)
    pol.verify()
