"""Route plans: every shard is served once, parts merge in shard order, empty steps are fine."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_dcp.exchange.route import (
    MergePart,
    build_rank_route,
    build_routes,
    max_pair_items,
    num_rounds,
    part_ranks,
    split_rounds,
    tokens_on,
)
from sglang_dcp.types import Placement, Shard


def P(rid: str, home: int, *shards: tuple[int, int, int]) -> Placement:
    return Placement(rid, home, tuple(Shard(*s) for s in shards))


def slot_maps(placements, num_ranks):
    """Give every (request, rank) distinct fake slots: rank * 10_000 + running counter."""
    maps = [dict() for _ in range(num_ranks)]
    nxt = [r * 10_000 for r in range(num_ranks)]
    for p in placements:
        for r in range(num_ranks):
            n = tokens_on(p, r)
            if n:
                maps[r][p.rid] = list(range(nxt[r], nxt[r] + n))
                nxt[r] += n
    return maps


def check_routes(placements, routes):
    """The invariants every route set must satisfy."""
    W = len(routes)
    maps = slot_maps(placements, W)
    by_rid = {p.rid: p for p in placements}
    served: dict[tuple[str, int], tuple[int, ...]] = {}
    for rt in routes:
        for row, rid in enumerate(rt.home_rids):
            if rt.has_local:
                served[(rid, rt.rank)] = rt.local_slots[row]
        for p in range(W):
            assert not rt.send[rt.rank] and not rt.recv[rt.rank]
            # what home rt.rank sends p is exactly what p expects from it, in order
            assert [rt.home_rids[i] for i in rt.send[p]] == [g.rid for g in routes[p].recv[rt.rank]]
            for g in rt.recv[p]:
                assert g.src == p and (g.rid, rt.rank) not in served
                served[(g.rid, rt.rank)] = g.slots
    want = {(p.rid, r): tuple(maps[r].get(p.rid, ())) for p in placements for r in part_ranks(p)}
    assert served == want  # every (request, rank with KV) exactly once, with its slots
    for rt in routes:
        for row, rid in enumerate(rt.home_rids):
            p = by_rid[rid]
            assert tuple(m.rank for m in rt.merge[row]) == part_ranks(p)
            for m in rt.merge[row]:
                if m.rank == rt.rank:
                    assert m.index == row
                else:
                    assert rt.send[m.rank][m.index] == row


def test_mixed_step():
    ps = [
        P("a", 0, (1, 0, 8), (2, 8, 16), (0, 16, 19)),  # degree 3
        P("b", 1, (1, 0, 5)),  # degree 1
        P("c", 0, (0, 0, 4), (2, 4, 8), (0, 8, 9)),  # home holds a sealed shard and the tail
        P("d", 2, (0, 0, 4), (1, 4, 8), (2, 8, 8)),  # empty tail
    ]
    routes = build_routes(ps, num_ranks=3, slots=slot_maps(ps, 3))
    check_routes(ps, routes)
    r0 = routes[0]
    assert r0.home_rids == ("a", "c")
    assert r0.merge[0] == (MergePart(1, 0), MergePart(2, 0), MergePart(0, 0))
    assert r0.merge[1] == (MergePart(0, 1), MergePart(2, 1))  # shard token order: home first
    assert len(r0.local_slots[1]) == 5  # both of c's shards on rank 0 in one item
    assert routes[2].local_slots == ((),)  # d's empty tail: an empty local item
    assert max_pair_items(ps, 3) == 2
    assert routes == build_routes(ps, num_ranks=3, slots=slot_maps(ps, 3))  # deterministic


def test_empty_step_and_idle_ranks():
    routes = build_routes([], num_ranks=4, slots=[{}] * 4)
    for rt in routes:
        assert rt.batch_size == 0 and rt.num_guest_items == 0 and rt.max_send == 0
    assert max_pair_items([], 4) == 0 and num_rounds([], 4, 1) == 1
    ps = [P("a", 0, (3, 0, 4), (0, 4, 6))]
    routes = build_routes(ps, num_ranks=4, slots=slot_maps(ps, 4))
    check_routes(ps, routes)
    assert routes[3].home_rids == () and len(routes[3].recv[0]) == 1  # guest shards only
    assert routes[1].num_guest_items == 0 and routes[1].batch_size == 0  # nothing at all


def test_empty_peer_shard_is_skipped():
    ps = [P("a", 0, (1, 0, 0), (0, 0, 3))]
    routes = build_routes(ps, num_ranks=2, slots=slot_maps(ps, 2))
    assert routes[0].merge == ((MergePart(0, 0),),) and routes[1].num_guest_items == 0


@pytest.mark.parametrize(
    "ps, msg",
    [
        ([P("a", 0, (0, 1, 4))], "tile"),
        ([P("a", 0, (1, 0, 4), (0, 5, 6))], "tile"),
        ([P("a", 0, (5, 0, 4), (0, 4, 5))], "outside"),
        ([P("a", 0, (0, 0, 4)), P("a", 1, (1, 0, 4))], "twice"),
    ],
)
def test_bad_placements(ps, msg):
    with pytest.raises(ValueError, match=msg):
        build_rank_route(ps, rank=0, num_ranks=2, local_slots={"a": [0, 1, 2, 3]})


def test_slot_map_must_match_placement():
    ps = [P("a", 0, (1, 0, 4), (0, 4, 6))]
    with pytest.raises(ValueError, match="has 3 slots"):
        build_rank_route(ps, rank=1, num_ranks=2, local_slots={"a": [0, 1, 2]})
    with pytest.raises(ValueError, match="no slot map"):
        build_rank_route(ps, rank=1, num_ranks=2, local_slots={})
    rt = build_rank_route(ps, rank=1, num_ranks=2, local_slots={"a": [7, 8, 9, 10], "zz": [1]})
    assert rt.recv[0][0].slots == (7, 8, 9, 10)  # extra keys (not in this step) are ignored


def test_split_rounds():
    ps = [P(f"r{i}", 0, (1, 0, 4), (2, 4, 8), (0, 8, 9)) for i in range(5)]
    ps.append(P("x", 1, (0, 0, 4), (1, 4, 5)))
    routes = build_routes(ps, num_ranks=3, slots=slot_maps(ps, 3))
    assert num_rounds(ps, 3, 2) == 3 and num_rounds(ps, 3, 5) == 1
    with pytest.raises(ValueError, match="cannot carry"):
        split_rounds(routes[0], capacity=2, rounds=2)
    per_rank = [split_rounds(rt, capacity=2, rounds=3) for rt in routes]
    for k in range(3):
        rk = tuple(rounds[k] for rounds in per_rank)
        assert all(rt.max_send <= 2 and rt.max_recv <= 2 and rt.has_local == (k == 0) for rt in rk)
        for rt in rk:  # send/recv symmetry and merge indices hold within each round
            for p in range(3):
                assert [rt.home_rids[i] for i in rt.send[p]] == [g.rid for g in rk[p].recv[rt.rank]]
            for row, parts in enumerate(rt.merge):
                for m in parts:
                    assert m.index == row if m.rank == rt.rank else rt.send[m.rank][m.index] == row
    # over all rounds, each home row gets each of its parts exactly once
    for rank, rounds in enumerate(per_rank):
        for row, full in enumerate(routes[rank].merge):
            got = sorted(m.rank for rt in rounds for m in rt.merge[row])
            assert got == sorted(m.rank for m in full)


@st.composite
def placements_st(draw):
    W = draw(st.integers(1, 4))
    ps = []
    for i in range(draw(st.integers(0, 8))):
        home = draw(st.integers(0, W - 1))
        ranks = draw(st.lists(st.integers(0, W - 1), max_size=4)) + [home]
        pos, shards = 0, []
        for r in ranks:
            n = draw(st.integers(0, 9))
            shards.append(Shard(r, pos, pos + n))
            pos += n
        ps.append(Placement(f"q{i}", home, tuple(shards)))
    return W, ps


@settings(max_examples=150, deadline=None)
@given(placements_st(), st.integers(1, 3))
def test_route_invariants(case, capacity):
    W, ps = case
    routes = build_routes(ps, num_ranks=W, slots=slot_maps(ps, W))
    check_routes(ps, routes)
    assert max(max(rt.max_send, rt.max_recv) for rt in routes) == max_pair_items(ps, W)
    R = num_rounds(ps, W, capacity)
    for rt in routes:
        rounds = split_rounds(rt, capacity=capacity, rounds=R)
        assert sum(r.num_guest_items for r in rounds) == rt.num_guest_items
        assert sum(r.num_kv_slots for r in rounds) == rt.num_kv_slots


def test_route_module_is_pure():
    import subprocess

    code = "import sglang_dcp.exchange.route, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
