"""The DP controller's waiting queue (``DcpDispatcher`` with ``queue=True``) over the real
``dcp`` planner: first fit, bounded by ``max_bypass`` so a long request is not starved, and
nothing lost (every request is placed, answered 400, or still waiting)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_dcp.planner import ClusterSpec, make_policy
from sglang_dcp.sglang.dispatcher import DcpDispatcher
from sglang_dcp.sglang.options import DEFAULT_QUEUE_MAX_BYPASS

RANKS, KV, PAGE = 2, 1024, 64


def req(rid: str, prompt: int, max_new: int = 8):
    return SimpleNamespace(
        rid=rid, input_ids=[1] * prompt, sampling_params=SimpleNamespace(max_new_tokens=max_new)
    )


class Harness:
    def __init__(self, max_bypass):
        policy = make_policy("dcp", ClusterSpec.uniform(RANKS, KV, PAGE), "qwen3-235b-h200")
        self.placed: list[str] = []
        self.rejected: list[str] = []
        self.d = DcpDispatcher(
            policy,
            send=lambda rank, r, placement: self.placed.append(r.rid),
            reject=lambda r, reason: self.rejected.append(r.rid),
            active_ranks=lambda: range(RANKS),
            queue=True,
            max_bypass=max_bypass,
        )

    def arrive(self, rid, prompt):
        self.d.dispatch(req(rid, prompt))

    def finish(self, rid):
        self.d.finished([rid])


def long_waiting(max_bypass) -> Harness:
    """A full cluster, then "long" (needs both ranks) waiting while one rank is free again."""
    h = Harness(max_bypass)
    h.arrive("fill0", 1000)
    h.arrive("fill1", 1000)  # the cluster is full
    h.arrive("long", 1500)  # needs both ranks: waits
    assert h.d.queue.keys() == {"long"}
    h.finish("fill0")  # 1024 free on one rank: not enough for "long"
    return h


def test_first_fit_lets_short_requests_pass_a_long_one_a_bounded_number_of_times():
    h = long_waiting(max_bypass=2)
    for i in range(2):  # two short ones fit and pass it
        h.arrive(f"short{i}", 100)
    assert h.placed[-2:] == ["short0", "short1"] and h.d.bypassed["long"] == 2
    h.arrive("short2", 100)  # fits, but "long" has been passed over twice: it waits behind
    assert list(h.d.queue) == ["long", "short2"]
    for rid in ("short0", "short1"):
        h.finish(rid)
    assert "long" not in h.placed
    h.finish("fill1")  # now "long" fits, then the short one behind it
    assert h.placed[-2:] == ["long", "short2"] and not h.d.queue


def test_behind_a_starving_head_a_request_that_can_never_fit_is_answered_at_once():
    h = long_waiting(max_bypass=0)
    h.arrive("huge", RANKS * KV + 100)  # larger than the whole cluster: no reason to wait
    assert h.rejected == ["huge"] and list(h.d.queue) == ["long"]
    h.arrive("short", 100)  # fits some day: it waits behind "long"
    assert list(h.d.queue) == ["long", "short"] and h.rejected == ["huge"]


def test_one_drain_passes_a_waiting_request_at_most_max_bypass_times():
    """Found by the property test below: a drain that placed two short requests behind a long
    one that did not fit passed it over twice with max_bypass=1."""
    h = Harness(max_bypass=1)
    for i, prompt in enumerate([300, 700, 700, 40, 300, 40, 40]):
        h.arrive(f"r{i}", prompt)
    assert list(h.d.queue) == ["r2", "r4", "r5", "r6"]
    h.finish("r0")  # r2 fits again, r4 does not; r5 may pass r4 once, r6 may not
    assert h.placed[-2:] == ["r2", "r5"] and list(h.d.queue) == ["r4", "r6"]


def test_zero_is_strict_arrival_order():
    h = long_waiting(max_bypass=0)
    h.arrive("short", 100)  # would fit, but arrives after a waiting request
    assert list(h.d.queue) == ["long", "short"]
    h.finish("fill1")
    assert h.placed[-2:] == ["long", "short"]


def test_an_aborted_waiting_request_forgets_its_count():
    h = long_waiting(max_bypass=1)
    h.arrive("short", 100)
    assert h.d.bypassed == {"long": 1}
    assert [r.rid for r in h.d.drop_queued("long")] == ["long"]
    assert h.d.bypassed == {} and not h.d.queue
    h.arrive("short2", 100)  # nothing blocks it any more
    assert h.placed[-1] == "short2"


def test_bad_max_bypass_is_refused():
    with pytest.raises(ValueError, match="max_bypass"):
        Harness(max_bypass=-1)


def test_the_default_bound_is_the_flags_default():
    assert Harness(max_bypass=DEFAULT_QUEUE_MAX_BYPASS).d.max_bypass == 16


ops = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.sampled_from([40, 300, 700, 1100, 1900, 2500])),
        st.tuples(st.just("finish"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, max_bypass=st.one_of(st.none(), st.integers(0, 4)))
def test_nothing_is_lost_nor_passed_over_more_than_max_bypass_times(ops, max_bypass):
    h = Harness(max_bypass)
    arrival: dict[str, int] = {}
    live: list[str] = []
    n = 0

    def step_finish(i):
        if live:
            h.finish(live.pop(i % len(live)))

    for op, arg in ops:
        if op == "arrive":
            rid = f"r{n}"
            arrival[rid] = n
            n += 1
            before = len(h.placed)
            h.arrive(rid, arg)
            live += h.placed[before:]
        else:
            before = len(h.placed)
            step_finish(arg)
            live += h.placed[before:]
        # nothing lost: every request is placed, rejected or waiting, exactly once
        seen = h.placed + h.rejected + list(h.d.queue)
        assert sorted(seen) == sorted(arrival)
    # liveness: finishing everything placed drains the queue
    while live:
        before = len(h.placed)
        h.finish(live.pop(0))
        live += h.placed[before:]
    assert not h.d.queue and not h.d.bypassed
    assert sorted(h.placed + h.rejected) == sorted(arrival)
    # the bound: later arrivals placed ahead of a request while it waited
    if max_bypass is not None:
        order = {rid: i for i, rid in enumerate(h.placed)}
        for rid in h.placed:
            passed = [
                o for o in h.placed
                if arrival[o] > arrival[rid] and order[o] < order[rid]
            ]  # fmt: skip
            assert len(passed) <= max_bypass, (rid, passed)
