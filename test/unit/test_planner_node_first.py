"""``dcp``'s node-first rule (``planner/node_first.py``): a split that would cross nodes waits
``cross_wait_ms`` for room inside one node, then crosses; nothing else changes."""

from __future__ import annotations

import pytest

from sglang_dcp.planner import ClusterSpec, make_policy
from sglang_dcp.types import Rejection, Request

CAP, PAGE, RPN = 1024, 64, 8


def filled(num_ranks: int, free: list[int], **opts):
    """``dcp`` over ``num_ranks`` ranks of ``RPN``, each rank filled whole to leave ``free[r]``."""
    cl = ClusterSpec.uniform(num_ranks, CAP, PAGE, ranks_per_node=RPN)
    p = make_policy("dcp", cl, "deepseek-v3-h200", max_degree=num_ranks, min_shard_tokens=PAGE,
                    **opts)
    for r, f in enumerate(free):
        if CAP - f:
            got = p.admit(Request(f"fill{r}", CAP - f - 8, 8), home_rank=r)
            assert not isinstance(got, Rejection), got
    p.on_time(0.0, 0)
    return p


def crosses(placement) -> bool:
    return len({s.rank // RPN for s in placement.shards}) > 1


def test_a_young_split_that_must_cross_waits_then_crosses():
    p = filled(16, [128] * 16, cross_wait_ms=1500)
    big = Request("big", 1528, 8)  # 1536 tokens: more than a node's 8 x 128 free
    got = p.admit(big)
    assert isinstance(got, Rejection) and got.retryable and "inside one node" in got.reason
    assert got.retry_at_ms == 1500.0  # when time alone changes the answer (the server's queue)
    p.on_time(1499.0, 10)
    assert isinstance(p.admit(big), Rejection)
    p.on_time(1500.0, 11)  # it has waited cross_wait_ms since its first refusal
    got = p.admit(big)
    assert not isinstance(got, Rejection) and crosses(got)
    p.verify()


def test_by_default_a_split_crosses_only_when_no_node_could_ever_hold_it():
    p = filled(16, [128] * 16)
    assert p.cross_wait_ms == float("inf")
    big = Request("big", 1528, 8)
    for t in (0.0, 1e4, 1e9):  # it waits for room inside one node, however long
        p.on_time(t, 0)
        got = p.admit(big)
        assert isinstance(got, Rejection) and got.retryable and got.retry_at_ms is None
        assert "inside one node" in got.reason and "inf" not in got.reason
    p.finish("fill3")  # node 0 now has room
    got = p.admit(big)
    assert not isinstance(got, Rejection) and not crosses(got)
    p.verify()


def test_a_split_that_fits_one_node_stays_there():
    # node 0 has little room per rank, node 1 plenty: whatever the cheapest plan, no crossing
    p = filled(16, [128] * 8 + [512] * 8)
    for i in range(2):
        got = p.admit(Request(f"r{i}", 1528, 8))
        assert not isinstance(got, Rejection) and not crosses(got), got
    got = p.admit(Request("r2", 1528, 8))  # node 1 is full now, node 0 too small: it waits
    assert isinstance(got, Rejection) and got.retryable
    p.verify()


@pytest.mark.parametrize("opts,ranks", [({"cross_wait_ms": 0}, 16),
                                        ({"exchange_wire": "bucketed"}, 16)])
def test_off_or_unscoped_crosses_at_once(opts, ranks):
    p = filled(ranks, [128] * ranks, **opts)
    got = p.admit(Request("big", 1528, 8))
    assert not isinstance(got, Rejection) and crosses(got)


def test_one_node_and_whole_placements_are_untouched():
    p = filled(8, [128] * 8)
    got = p.admit(Request("big", 760, 8))  # 768 > 128: split over the one node, no wait
    assert not isinstance(got, Rejection) and got.degree > 1
    q = filled(16, [128] * 15 + [1024])
    got = q.admit(Request("whole", 900, 8))
    assert not isinstance(got, Rejection) and got.degree == 1 and got.home_rank == 15


def test_a_bad_cross_wait_is_refused():
    cl = ClusterSpec.uniform(16, CAP, PAGE, ranks_per_node=RPN)
    with pytest.raises(ValueError, match="cross_wait_ms must be >= 0"):
        make_policy("dcp", cl, "deepseek-v3-h200", cross_wait_ms=-1)


def test_a_request_no_node_could_ever_hold_crosses_at_once():
    p = filled(16, [1024] * 16)  # an empty cluster of two 8-rank nodes (8192 tokens each)
    got = p.admit(Request("huge", 9000, 8))
    assert not isinstance(got, Rejection) and crosses(got)


def test_a_request_no_split_could_ever_hold_is_refused_not_kept_waiting():
    cl = ClusterSpec.uniform(16, CAP, PAGE, ranks_per_node=RPN)
    p = make_policy("dcp", cl, "deepseek-v3-h200", max_degree=2, min_shard_tokens=PAGE)
    got = p.admit(Request("big", 3000, 8))  # > 2 ranks: no placement ever, in a node or not
    assert isinstance(got, Rejection) and not got.retryable


def test_a_waiting_request_is_refused_without_a_search():
    p = filled(16, [128] * 16)
    calls = []
    place = p._place
    p._place = lambda *a, **k: calls.append(a) or place(*a, **k)
    got = p.admit(Request("big", 1528, 8))  # no node has 1536 free: every plan would cross
    assert isinstance(got, Rejection) and got.retryable and "inside one node" in got.reason
    assert not calls  # its retries (one per finish on a server) stay O(num_ranks)
    p.finish("fill3")
    assert not isinstance(p.admit(Request("big", 1528, 8)), Rejection) and calls
