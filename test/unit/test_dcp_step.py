"""The step plan every rank derives from the header (``sglang_dcp.sglang.step``), pure Python."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from sglang_dcp.exchange.route import part_ranks, tokens_on
from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang.layout import reassign, runtime_shards, subtract
from sglang_dcp.sglang.step import Decoding, RankNews, plan_step
from sglang_dcp.types import Placement, Shard


def placement(home, sealed, tail_start, end):
    shards = tuple(Shard(r, a, b) for r, a, b in sealed) + (Shard(home, tail_start, end),)
    return Placement("r", home, shards)


def test_runtime_shards_moves_sealed_shards_and_grows_the_tail():
    p = placement(0, [(1, 0, 64), (2, 64, 192)], 192, 300)
    moved = [(1, 0, 64), (2, 64, 192)]
    assert runtime_shards(p, moved, 250) == ((1, 0, 64), (2, 64, 192), (0, 192, 250))


def test_a_sealed_shard_that_did_not_move_stays_home_merged_with_the_tail():
    p = placement(0, [(1, 0, 64), (2, 64, 192)], 192, 300)
    assert runtime_shards(p, [(1, 0, 64)], 200) == ((1, 0, 64), (0, 64, 200))
    assert runtime_shards(p, [], 200) == ((0, 0, 200),)


def test_tail_cannot_end_before_the_sealed_shards():
    with pytest.raises(ValueError, match="sealed shards end at 192"):
        runtime_shards(placement(0, [(1, 0, 192)], 192, 300), [(1, 0, 192)], 100)


def test_news_round_trip_the_wire():
    n = RankNews(
        moves=[Migration("a", 0, 1, 0, 64)],
        releases=["b"],
        decoding=[Decoding("a", 0, ((1, 0, 64), (0, 64, 90)))],
    )
    assert RankNews.from_words(n.to_words()) == n
    assert not RankNews() and n


def test_plan_puts_failed_moves_back_home_and_orders_by_rank():
    news = [
        RankNews(decoding=[Decoding("a", 0, ((1, 0, 64), (0, 64, 90)))]),
        RankNews(decoding=[Decoding("b", 1, ((2, 0, 64), (3, 64, 128), (1, 128, 140)))]),
        RankNews(),
    ]
    plan = plan_step(news, [Migration("b", 1, 3, 64, 128)])
    assert [p.rid for p in plan.placements] == ["a", "b"]
    b = plan.placements[1]
    # the failed range stays on its source (the home here), merged with the home's tail
    assert [(s.rank, s.start, s.end) for s in b.shards] == [(2, 0, 64), (1, 64, 140)]
    assert plan.active and plan.capacity(4) == 1
    assert part_ranks(b) == (2, 1)


def test_a_failed_migration_stays_on_its_guest():
    # b's shard [0, 64) on rank 2 was to move to rank 3 mid-decode; the copy failed
    news = [RankNews(decoding=[Decoding("b", 1, ((3, 0, 64), (1, 64, 140)))])]
    plan = plan_step(news, [Migration("b", 2, 3, 0, 64)])
    assert [(s.rank, s.start, s.end) for s in plan.placements[0].shards] == [
        (2, 0, 64), (1, 64, 140)]


def test_reassign_cuts_places_and_merges():
    home = ((0, 0, 200),)
    assert reassign(home, 64, 128, 2) == ((0, 0, 64), (2, 64, 128), (0, 128, 200))
    moved = ((1, 0, 64), (2, 64, 128), (0, 128, 200))
    assert reassign(moved, 64, 128, 1) == ((1, 0, 128), (0, 128, 200))  # joins its neighbour
    assert reassign(moved, 64, 128, 0) == ((1, 0, 64), (0, 64, 200))  # rejoins the home
    assert reassign(moved, 0, 32, 3) == ((3, 0, 32), (1, 32, 64), (2, 64, 128), (0, 128, 200))
    with pytest.raises(ValueError, match="outside"):
        reassign(home, 300, 364, 1)


def test_runtime_shards_follow_moves_in_order():
    p = placement(0, [(1, 0, 64), (2, 64, 128)], 128, 300)
    # shipped at the first decode, then [0, 64) migrated from rank 1 to rank 3 mid-decode
    moved = [(1, 0, 64), (2, 64, 128), (3, 0, 64)]
    assert runtime_shards(p, moved, 150) == ((3, 0, 64), (2, 64, 128), (0, 128, 150))
    with pytest.raises(ValueError, match="past"):
        runtime_shards(p, [(1, 0, 200)], 150)


def test_a_step_with_every_move_failed_is_not_active():
    news = [RankNews(decoding=[Decoding("a", 0, ((1, 0, 64), (0, 64, 90)))]), RankNews()]
    plan = plan_step(news, [Migration("a", 0, 1, 0, 64)])
    assert not plan.active and plan.capacity(2) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(1, 4), min_size=n, max_size=n),  # shard sizes in pages
            st.lists(st.integers(0, 3), min_size=n, max_size=n),  # ranks
            st.lists(st.booleans(), min_size=n, max_size=n),  # moved?
            st.integers(0, 300),  # tokens past the tail start
        )
    ),
    st.integers(0, 3),
)
def test_runtime_shards_cover_every_token_once(args, home):
    sizes, ranks, moved_flags, extra = args
    sealed, pos = [], 0
    for size, r in zip(sizes, ranks):
        sealed.append((r if r != home else (r + 1) % 4, pos, pos + 64 * size))
        pos += 64 * size
    p = placement(home, sealed, pos, pos + 500)
    moved = [s for s, m in zip(sealed, moved_flags) if m]
    seq_len = pos + extra
    shards = runtime_shards(p, moved, seq_len)
    cur = 0
    for r, a, b in shards:
        assert a == cur and b >= a
        cur = b
    assert cur == seq_len and shards[-1][0] == home
    rp = Placement("r", home, tuple(Shard(*s) for s in shards))
    for r in range(4):
        want = sum(b - a for (rr, a, b) in moved if rr == r)
        if r == home:
            want = seq_len - sum(b - a for (_, a, b) in moved)
        assert tokens_on(rp, r) == want


def test_subtract_ranges():
    assert subtract([(0, 100)], [(0, 64)]) == [(64, 100)]
    assert subtract([(0, 100)], [(10, 20), (30, 40)]) == [(0, 10), (20, 30), (40, 100)]
    assert subtract([(0, 100)], [(0, 100)]) == []
    assert subtract([(5, 10)], [(20, 30)]) == [(5, 10)]


def test_where_now_equals_the_moves_applied_in_order():
    """The one-pass layout of disjoint moved pieces, and the in-order one of overlapping moves
    (a range migrated again), both equal applying every move in order with ``reassign``."""
    import random

    from sglang_dcp.sglang.layout import reassign, where_now

    def applied(home, moved, n):
        out = ((home, 0, n),) if n else ()
        for r, a, b in moved:
            if a < min(b, n):
                out = reassign(out, a, min(b, n), r)
        return out if out and out[-1][0] == home else (*out, (home, n, n))

    rng = random.Random(0)
    for _ in range(3000):
        n, home = rng.randint(0, 100), rng.randrange(4)
        if rng.random() < 0.5:  # disjoint pieces, any order
            cuts = sorted(rng.sample(range(110), k=rng.randint(0, 8)))
            moved = [(rng.randrange(4), cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2)]
            rng.shuffle(moved)
        else:  # overlapping moves
            moved = []
            for _ in range(rng.randint(0, 5)):
                a = rng.randint(0, 100)
                moved.append((rng.randrange(4), a, rng.randint(a + 1, 110)))
        assert where_now(home, moved, n) == applied(home, moved, n), (home, moved, n)


def test_a_home_entry_caches_its_layout_while_only_the_tail_grows():
    from types import SimpleNamespace

    from sglang_dcp.sglang.entries import HomeEntry

    p = placement(0, [(1, 0, 64), (2, 64, 128)], 128, 200)
    h = HomeEntry(SimpleNamespace(dcp=p))
    h.layout = h.layout.with_move(1, 0, 64)
    for n in (130, 131, 150):
        assert h.shards_at(n) == runtime_shards(p, h.layout.moved, n)
    h.layout = h.layout.with_offered(128)  # not a move: the cache stays
    assert h.shards_at(150) == ((1, 0, 64), (0, 64, 150))
    h.layout = h.layout.with_move(2, 64, 128)  # another move: the cache is rebuilt
    assert h.shards_at(151) == runtime_shards(p, h.layout.moved, 151) == ((1, 0, 64), (2, 64, 128),
                                                                    (0, 128, 151))  # fmt: skip
    with pytest.raises(ValueError, match="sealed shards end at 128"):
        h.shards_at(100)  # as runtime_shards: fewer tokens than the sealed shards


def test_a_predicted_step_reuses_the_route_and_equals_a_rebuilt_one():
    """``rank_step``: when no rank had news and the same ranks decode, the step reuses the
    previous route with longer home slots; it equals ``build_step`` of the same plan. A step with
    news, or other ranks decoding, is built anew."""
    from types import SimpleNamespace

    import torch

    from sglang_dcp.sglang.step_build import build_step, rank_step

    W, rank = 3, 0
    r2t = torch.arange(4 * 400, dtype=torch.int32).view(4, 400)
    home = {rid: SimpleNamespace(req=SimpleNamespace(kv=SimpleNamespace(req_pool_idx=i)))
            for i, rid in enumerate(("a", "b"), start=1)}  # fmt: skip
    guests = {"g": SimpleNamespace(slots=torch.arange(64) + 7)}
    rt = SimpleNamespace(rank=rank, num_ranks=W, prev_step=None, num_steps=0, home=home,
                         guests=guests, capacity=16, ranks_per_node=None,
                         batch_rows={1: (0, 200), 2: (1, 250)},
                         scheduler=SimpleNamespace(req_to_token_pool=SimpleNamespace(
                             req_to_token=r2t)))  # fmt: skip

    def plan(n):
        return plan_step([
            RankNews(decoding=[Decoding("a", 0, ((1, 0, 64), (0, 64, n))),
                               Decoding("b", 0, ((2, 0, 128), (0, 128, n + 50)))]),
            RankNews(decoding=[Decoding("g", 1, ((0, 0, 64), (1, 64, n)))]), RankNews(),
        ], [])  # fmt: skip

    def flat(slots):
        return torch.cat([p.long() for p in slots.parts]).tolist()

    decoded = [True, True, False]
    first = prev = rank_step(rt, plan(200), predicted=False, decoded=decoded)
    assert first.reuses_route is None
    for n in (201, 202):
        p = plan(n)
        step = rank_step(rt, p, predicted=True, decoded=decoded)
        assert step.reuses_route is prev.route  # one link back only: a route, not a step
        assert step.batch_rows == ((0, 200), (1, 250))  # the header's host view, built in
        prev = step
        ref = build_step(p, rank=rank, num_ranks=W, home_reqs={k: v.req for k, v in home.items()},
                         guest_slots={"g": guests["g"].slots}, req_to_token=r2t, capacity=16,
                         tag=0)  # fmt: skip
        got, want = step.route, ref.route
        assert (got.home_rids, got.send, got.merge) == (want.home_rids, want.send, want.merge)
        assert [flat(s) for s in got.local_slots] == [flat(s) for s in want.local_slots]
        assert [[len(g.slots) for g in r] for r in got.recv] == \
            [[len(g.slots) for g in r] for r in want.recv]  # fmt: skip
        assert step.row_keys == ref.row_keys and step.kv_slots == ref.kv_slots
    assert rank_step(rt, plan(203), predicted=False, decoded=decoded).reuses_route is None  # news
    assert rank_step(rt, plan(204), predicted=True, decoded=[True] * 3).reuses_route is None  # others
