"""dcp's issue-27 options: the targeted hold (planner/hold.py), the home tie-break, the
always-on split headroom and the aged budget (planner/budget.py); their invariants."""

import random

import pytest

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.types import Placement, Rejection, Request

DS = load_profile("deepseek-v3-h200")
PAGE = 64


def _loaded(**opts):
    """4 ranks of 64k tokens, 30k on each; the step budget 1 ms above the step now, so a
    60k request fits nowhere within it (whole: +1.5 ms of attention; split: +2.4 ms fixed)."""
    p = make_policy("dcp", ClusterSpec.uniform(4, 64 * 1000, PAGE), DS, step_slo_ms=1e6, **opts)
    for r in range(4):
        assert isinstance(p.admit(Request(f"f{r}", 30_000, 0), home_rank=r), Placement)
    now = DS.step_time_us(p.kv_tokens(), p.batch_sizes(), p.batch_sizes())
    p.step_slo_us = now + 1000.0
    return p


def test_hold_keeps_the_refused_plans_ranks_for_the_waiting_request():
    p = _loaded(hold=True, max_degree=2)  # its best plan spans 2 of the 4 ranks
    big = Request("big", 60_000, 64)
    rej = p.admit(big)
    assert isinstance(rej, Rejection) and rej.retryable and "step budget" in rej.reason
    rid, ranks = p.held()
    assert rid == "big" and ranks and ranks < {0, 1, 2, 3}
    small = p.admit(Request("s", 640, 0))
    assert isinstance(small, Placement) and not {s.rank for s in small.shards} & ranks
    pinned = p.admit(Request("pin", 640, 0), home_rank=min(ranks))  # a router's choice stands
    assert isinstance(pinned, Placement) and pinned.home_rank == min(ranks)
    p.verify()
    p.finish("pin")
    for r in ranks:  # the held ranks drain: the request fits within the budget there
        p.finish(f"f{r}")
    got = p.admit(big)
    assert isinstance(got, Placement)
    assert p.held() == (None, frozenset())
    p.verify()


def test_hold_is_off_without_a_budget_or_when_asked():
    for p in (_loaded(hold=False),):
        assert isinstance(p.admit(Request("big", 60_000, 64)), Rejection)
        assert p.held() == (None, frozenset())
    free = make_policy("dcp", ClusterSpec.uniform(4, 64 * 1000, PAGE), DS, hold=True)
    assert free.hold is False  # no step budget: nothing to hold for


def test_hold_never_changes_what_fits_random_sequences():
    """Random admits/finishes with a hold: the books stay exact, a request is never placed on
    a rank held for another, and every request that was ever refused can still be placed in
    an emptied cluster."""
    rng = random.Random(7)
    for trial in range(30):
        p = make_policy("dcp", ClusterSpec.uniform(6, 64 * 800, PAGE), DS,
                        step_slo_ms=rng.uniform(20, 40), hold=True,
                        home_tie=rng.choice(["fewest", "fullest"]),
                        headroom_always=rng.random() < 0.5,
                        exchange_room_ms=rng.choice([None, 0.0, 1e9]))
        live = []
        for i in range(120):
            if live and rng.random() < 0.4:
                p.finish(live.pop(rng.randrange(len(live))))
            else:
                rid = f"r{trial}-{i}"
                holder, held = p.held()
                pinned = rng.random() < 0.1
                got = p.admit(Request(rid, rng.randint(64, 40_000), rng.randint(0, 4_000)),
                              home_rank=rng.randrange(6) if pinned else None)
                if isinstance(got, Placement):
                    live.append(rid)
                    if holder is not None and holder != rid and not pinned:
                        assert not {s.rank for s in got.shards} & held
            p.verify()
        for rid in live:
            p.finish(rid)
        assert p.kv_tokens() == [0] * 6
        assert isinstance(p.admit(Request("last", 40_000, 4_000)), Placement)


def test_home_tie_fullest_picks_the_fullest_rank_that_keeps_the_step():
    c = ClusterSpec.uniform(4, 64 * 1000, PAGE)
    for tie, want in (("fewest", 3), ("fullest", 1)):
        p = make_policy("dcp", c, DS, home_tie=tie)
        p.admit(Request("a", 20_000, 0), home_rank=0)  # the slowest rank sets the step and,
        p.admit(Request("a2", 20_000, 0), home_rank=0)  # with 2 homed, the MoE barrier
        p.admit(Request("b", 20_000, 0), home_rank=1)
        p.admit(Request("c", 10_000, 0), home_rank=2)
        got = p.admit(Request("x", 640, 0))  # fits under rank 0's time on ranks 1-3
        assert got.home_rank == want, tie
    with pytest.raises(ValueError, match="home_tie"):
        make_policy("dcp", c, DS, home_tie="nope")


def test_headroom_always_splits_near_the_budget_without_guests():
    """Near the budget (within the fixed exchange) a whole placement is split when the split
    predicts a shorter step, guests or not (``headroom_always``); by default only while
    guests exist."""
    c = ClusterSpec.uniform(4, 64 * 4000, PAGE)
    out = {}
    for always in (False, True):
        p = make_policy("dcp", c, DS, step_slo_ms=1e6, headroom_always=always)
        p.admit(Request("f", 64, 0), home_rank=0)  # not empty: the budget applies
        big = Request("big", 200_000, 0)
        whole = p._predicted_step_us(1, [], 200_000)  # on rank 1, the home it would take
        p.step_slo_us = whole + 100.0  # the whole placement fits, 0.1 ms under the budget
        got = p.admit(big)
        assert isinstance(got, Placement)
        out[always] = got.degree
        p.verify()
    assert out[False] == 1 and out[True] > 1


def test_aged_request_gets_the_overshoot_budget():
    p = _loaded(age_ms=1000.0, age_overshoot=0.5)
    p.on_time(0.0, 0)
    big = Request("big", 60_000, 64)
    assert isinstance(p.admit(big), Rejection)
    p.on_time(999.0, 10)
    assert isinstance(p.admit(big), Rejection)
    p.on_time(1000.0, 11)
    assert isinstance(p.admit(big), Placement)  # waited 1 s: 1.5x the budget
    assert "big" not in p._waiting_since
    p.verify()


def test_exchange_room_splits_a_whole_placement_that_would_bar_later_splits():
    """Without guests, and within ``exchange_room_ms`` of a request that must split, a whole
    placement within the budget but less than the exchange's start cost under it is split
    when the split is within the budget; otherwise (off, no such request seen, the window
    passed) it stays whole. A small request whose split would not fit under the budget (the
    start cost is in it) stays whole either way; one that is small against a large rank but
    whose split fits is split (no size floor)."""
    c = ClusterSpec.uniform(4, 64 * 4000, PAGE)
    out = {}
    for case in ("off", "unseen", "seen", "expired"):
        p = make_policy("dcp", c, DS, step_slo_ms=1e6,
                        exchange_room_ms=0.0 if case == "off" else 1000.0)
        p.admit(Request("f", 64, 0), home_rank=0)  # not empty: the budget applies
        whole = p._predicted_step_us(1, [], 200_000)  # on rank 1, the home it would take
        p.step_slo_us = whole + 100.0  # whole fits, 0.1 ms under the budget
        if case in ("seen", "expired"):  # larger than every rank: it must split
            assert p._exchange_room(Request("huge", 300_000, 0), 300_032)
            assert p._must_split_ms == 0.0
        p.on_time(1001.0 if case == "expired" else 1000.0, 1)
        got = p.admit(Request("big", 200_000, 0))
        assert isinstance(got, Placement)
        out[case] = got.degree
        assert p.predicted_step_us() <= p.step_slo_us + 1e-6
        p.verify()
    assert out == {"off": 1, "unseen": 1, "seen": out["seen"], "expired": 1} and out["seen"] > 1
    p = make_policy("dcp", c, DS, step_slo_ms=1e6, exchange_room_ms=1000.0)
    p.admit(Request("f", 64, 0), home_rank=0)
    p.step_slo_us = p._predicted_step_us(1, [], 20_000) + 100.0
    p._exchange_room(Request("huge", 300_000, 0), 300_032)
    got = p.admit(Request("small", 20_000, 0))
    assert isinstance(got, Placement) and got.degree == 1
    assert p.predicted_step_us() <= p.step_slo_us + 1e-6
    # 200k against ranks of 1.28M tokens: under the fit rule's share of a rank (the old floor)
    big = ClusterSpec.uniform(4, 64 * 20_000, PAGE)
    p = make_policy("dcp", big, DS, step_slo_ms=1e6, exchange_room_ms=1000.0)
    p.admit(Request("f", 64, 0), home_rank=0)
    p.step_slo_us = p._predicted_step_us(1, [], 200_000) + 100.0
    assert 200_064 < p._split_free_share() * max(p.cap)
    p._exchange_room(Request("huge", 2_000_000, 0), 2_000_064)
    got = p.admit(Request("big", 200_000, 0))
    assert isinstance(got, Placement) and got.degree > 1
    assert p.predicted_step_us() <= p.step_slo_us + 1e-6
    p.verify()
    with pytest.raises(ValueError, match="exchange_room_ms"):
        make_policy("dcp", c, DS, exchange_room_ms=-1.0)
