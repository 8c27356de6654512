"""Sessions, per-rank prefix caches and the cached-layout admission (issue 26 item 5)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_dcp.planner import make_policy
from sglang_dcp.planner.base import ClusterSpec
from sglang_dcp.planner.cached import admit_on_layout
from sglang_dcp.planner.profile import load_profile
from sglang_dcp.sim.cost import StepModel
from sglang_dcp.sim.engine import SimOptions, simulate
from sglang_dcp.sim.metrics import FINISHED, REJECTED
from sglang_dcp.sim.prefix_cache import PrefixCache
from sglang_dcp.sim.sessions import SessionSpec, draw_sessions, session_ids
from sglang_dcp.types import Request

PROFILE = load_profile("deepseek-v3-h200-node8")


def _ideal_cached_share(w):
    p, L, o = w.parent, w.input_len, w.output_len
    pref = np.where(p >= 0, L[np.maximum(p, 0)] + o[np.maximum(p, 0)] - 1, 0)
    return pref.sum() / L.sum()


def test_sessions_are_seeded_and_extend_their_parent():
    a = draw_sessions(SessionSpec(num_sessions=30), seed=3)
    b = draw_sessions(SessionSpec(num_sessions=30), seed=3)
    assert np.array_equal(a.input_len, b.input_len) and np.array_equal(a.parent, b.parent)
    assert not np.array_equal(a.input_len, draw_sessions(SessionSpec(num_sessions=30),
                                                         seed=4).input_len)
    kid = np.flatnonzero(a.parent >= 0)
    par = a.parent[kid]
    assert np.all(par < kid)
    assert np.all(a.input_len[kid] >= a.input_len[par] + a.output_len[par])  # prompt + output
    assert np.all(a.input_len + a.output_len <= 512 * 1024)  # the mix's top edge
    sid = session_ids(a)
    assert len(np.unique(sid)) == 30 and np.bincount(sid[sid >= 0]).max() <= 32
    assert np.all(a.think_ms[a.parent < 0] == 0) and np.all(a.think_ms >= 0)
    r = a.at_rate(3.0)  # rate scaling keeps the session structure
    assert np.array_equal(r.parent, a.parent) and np.array_equal(r.think_ms, a.think_ms)


@pytest.mark.parametrize("mix", ["agentic-claude", "agentic-codex"])
def test_window_gives_tracelabs_cached_share(mix):
    """32-turn windows: an ideal cache serves ~96% of input tokens (TraceLab)."""
    w = draw_sessions(SessionSpec(mix=mix, num_sessions=300), seed=0)
    assert 0.95 <= _ideal_cached_share(w) <= 0.97


def test_cache_hits_same_rank_only_and_evicts_lru_tail_first():
    c = PrefixCache(3)
    c.store(7, [(0, 0, 1000), (1, 1000, None)], 1500, 1, [[0, 0, 1000]], 1000)
    c.store(8, [(2, 0, None)], 400, 2, [], 0)
    assert c.size == [1000, 500, 400]
    assert c.hit(7, [(0, 0, 1000), (1, 1000, 2000)], 1800) == 1500
    assert c.hit(7, [(2, 0, 2000)], 1800) == 0  # another rank: a miss
    assert c.hit(8, [(0, 0, 1000)], 900) == 0  # another session: a miss
    assert c.cached_layout(7) == (1, [[0, 0, 1000]], 1000)
    c.store(9, [(0, 0, None)], 300, 0, [], 0)  # rank 0: session 7 is now least recently used
    assert c.fit([1100, 10_000, 0]) == 200 + 400
    assert c.pieces[0][7] == [0, 800] and c.pieces[0][9] == [0, 300]  # the LRU lost its tail
    assert 8 not in c.pieces[2] and c.size == [1100, 500, 0]
    c.take(7, [(0, 0, 800)])
    assert 7 not in c.pieces[0] and c.size[0] == 300


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(1, 5000),
                          st.integers(0, 6000)), min_size=1, max_size=40))
def test_cache_never_exceeds_free_kv(ops):
    c = PrefixCache(3)
    for sess, rank, length, free in ops:
        c.store(sess, [(rank, 0, None)], length, rank, [], 0)
        c.fit([free] * 3)
        assert all(s <= free for s in c.size)
        assert c.size == [sum(e - s for s, e in p.values()) for p in c.pieces]


def test_admit_on_layout_keeps_the_layout_or_declines():
    cl = ClusterSpec.uniform(4, 100_032, 64)
    pol = make_policy("dcp", cl, PROFILE)
    sealed = [[1, 0, 64_000], [2, 64_000, 128_000]]
    got = admit_on_layout(pol, Request("a", 150_000, 500), 3, sealed, 128_000)
    assert got.home_rank == 3 and [(s.rank, s.start, s.end) for s in got.shards] == [
        (1, 0, 64_000), (2, 64_000, 128_000), (3, 128_000, 150_000)]
    pol.verify()
    assert admit_on_layout(pol, Request("b", 150_000, 500), 3, sealed, 128_000) is None
    assert "b" not in pol


def _run(w, policy, deployment, ranks=8, capacity=None, **opts):
    cl = ClusterSpec.uniform(ranks, capacity or PROFILE.kv_capacity_tokens, PROFILE.page_size)
    extra = {"step_slo_ms": 50.0, "split_rule": "auto"} if policy == "dcp" else {}
    pol = make_policy(policy, cl, PROFILE, **extra)
    return simulate(w, pol, StepModel(PROFILE, ranks, kv_capacity=cl.kv_capacity[0]), ranks,
                    kv_capacity=cl.kv_capacity, options=SimOptions(deployment=deployment, **opts))


def test_closed_loop_turns_follow_their_parent():
    w = draw_sessions(SessionSpec(num_sessions=6, turns=5), seed=1).at_rate(0.05)
    r = _run(w, "dcp", "colocated", cache_layout=True)
    assert set(np.unique(r.status)) <= {FINISHED, REJECTED} and r.finished == len(w)
    kid = np.flatnonzero(w.parent >= 0)
    assert np.all(r.arrival_ms[kid] >= r.finish_ms[w.parent[kid]] + w.think_ms[kid] - 1e-6)


def test_sharded_cache_hits_where_blind_routing_misses():
    w = draw_sessions(SessionSpec(num_sessions=12, turns=8), seed=2).at_rate(0.02)
    dcp = _run(w, "dcp", "colocated", cache_layout=True).deploy
    rr = _run(w, "round_robin", "colocated").deploy
    none = _run(w, "dcp", "colocated", prefix_cache=False).deploy
    assert none["cached_tokens"] == 0 and none["layout_hits"] == 0
    assert dcp["layout_hits"] > 0 and dcp["cache_hit_rate"] > rr["cache_hit_rate"]
    assert dcp["prefill_stall_ms"] < none["prefill_stall_ms"]
    # every turn after the first extends a cached context: close to the ideal share
    assert dcp["cache_hit_rate"] > 0.8 * _ideal_cached_share(w)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=0, max_size=3), st.integers(0, 3),
       st.integers(1, 60), st.integers(1, 200), st.lists(st.integers(1, 30), max_size=4))
def test_admit_on_layout_never_overbooks(pages, home, tail_pages, out, others):
    """Random cached layouts on a partly full cluster: either the exact layout, with books that
    verify and never exceed a rank, or None with nothing recorded."""
    page = 64
    cl = ClusterSpec.uniform(4, 64 * page, page)
    pol = make_policy("dcp", cl, PROFILE, step_slo_ms=50.0)
    for k, n in enumerate(others):  # other traffic
        pol.admit(Request(f"o{k}", n * page - 5, 5))
    sealed, start = [], 0
    for k, n in enumerate(pages):
        r = (home + 1 + k) % 4
        sealed.append([r, start, start + n * page])
        start += n * page
    before = list(pol.kv_tokens())
    got = admit_on_layout(pol, Request("x", start + tail_pages * page - 3, out), home, sealed,
                          start)
    if got is None:
        assert pol.kv_tokens() == before and "x" not in pol
    else:
        assert got.home_rank == home
        assert [[s.rank, s.start, s.end] for s in got.shards[:-1]] == sealed
        assert got.shards[-1].start == start
        pol.verify()
    assert all(k <= c for k, c in zip(pol.kv_tokens(), pol.capacity()))
