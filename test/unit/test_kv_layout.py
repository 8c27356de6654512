"""One request's KV layout (``sglang_dcp.sglang.layout``), pure Python: every view the data path
reads is a query on it and equals what the ranks used to keep beside it by hand (the home row's
moved ranges, each guest's range table, the ledger's sealed ranges)."""

from __future__ import annotations

import random

import pytest

from sglang_dcp.sglang.layout import KEPT, KvLayout, reassign, subtract
from sglang_dcp.types import Placement, Shard

P = Placement("r", 0, (Shard(1, 0, 64), Shard(2, 64, 128), Shard(0, 128, 200)))


def test_shards_sealed_and_views_after_shipping():
    lay = KvLayout.of(P).with_move(1, 0, 64).with_failed(2, 64, 128).with_offered(128)
    assert lay.shards(150) == ((1, 0, 64), (0, 64, 150))
    assert lay.sealed() == [[1, 0, 64], [0, 64, 128]]
    assert lay.moved == ((1, 0, 64),) and lay.failed == ((2, 64, 128),)
    assert lay.away() == ((1, 0, 64),) and lay.held(1) == [(0, 64)] and lay.held(2) == []
    assert lay.skip_rows() == [(0, 64)]
    assert lay.with_offered(100) is lay  # no change, same object (HomeEntry's cache holds)
    with pytest.raises(ValueError, match="sealed shards end at 128"):
        lay.shards(100)
    assert lay.upto(32) == ((1, 0, 32), (0, 32, 32))  # a prefill chunk's view: no check


def test_kept_pieces_are_skipped_rows_but_stay_home():
    lay = KvLayout.of(P, [(1, 0, 64), (2, 64, 128)]).with_kept([(128, 192)])
    assert lay.skip_rows() == [(0, 64), (64, 128), (128, 192)]
    assert lay.shards(200) == ((1, 0, 64), (2, 64, 128), (0, 128, 200))
    assert lay.away() == ((1, 0, 64), (2, 64, 128))
    assert [x.state for x in lay.ranges][-1] == KEPT


def test_a_migrated_range_leaves_its_old_guest_and_rejoins_the_home_row():
    lay = KvLayout.of(P, [(1, 0, 64), (2, 64, 128)])
    lay = lay.with_move(3, 0, 32)  # guest 1 -> guest 3
    assert lay.held(1) == [(32, 64)] and lay.held(3) == [(0, 32)]
    assert lay.skip_rows() == [(0, 32), (32, 64), (64, 128)]
    lay = lay.with_move(0, 64, 96)  # guest 2 -> home: back in its row
    assert lay.skip_rows() == [(0, 32), (32, 64), (96, 128)]
    assert lay.shards(130) == ((3, 0, 32), (1, 32, 64), (0, 64, 96), (2, 96, 128), (0, 128, 130))


def _random_moves(rng: random.Random, home: int, n: int, ranks: int):
    """Valid moves: each takes a range that lies on one rank now and sends it to another."""
    lay, out = KvLayout("x", home, n), []
    for _ in range(rng.randint(1, 10)):
        r, a, b = rng.choice([s for s in lay.shards(n) if s[2] > s[1]])
        x = rng.randint(a, b - 1)
        y = rng.randint(x + 1, b)
        dst = rng.choice([q for q in range(ranks) if q != r])
        out.append((r, dst, x, y))
        lay = lay.with_move(dst, x, y)
    return out


def test_queries_equal_the_tables_the_ranks_kept_by_hand():
    """``skip_rows`` equals the home's hand-kept moved rows (appended when a range left the home,
    cut when one came back) and ``held(rank)`` each guest's hand-kept table (a range per move
    received, cut by the moves it sent), for random ships and migrations."""
    rng = random.Random(7)
    for _ in range(500):
        home, n, ranks = rng.randrange(4), rng.randint(1, 120), 4
        lay = KvLayout("x", home, n)
        rows: list[tuple[int, int]] = []  # the old ``rt.moved_rows[idx]``
        tables: dict[int, list[tuple[int, int]]] = {r: [] for r in range(ranks)}  # GuestEntry
        for src, dst, a, b in _random_moves(rng, home, n, ranks):
            lay = lay.with_move(dst, a, b)
            if src == home:
                rows.append((a, b))
            elif dst == home:
                rows = subtract(rows, [(a, b)])
            if src != home:
                tables[src] = [p for r in tables[src] for p in subtract([r], [(a, b)])]
            if dst != home:
                tables[dst] = sorted([*tables[dst], (a, b)])
        covered = lambda spans: {t for a, b in spans for t in range(a, b)}  # noqa: E731
        assert covered(lay.skip_rows()) == covered(rows)
        for r in range(ranks):
            if r != home:
                assert lay.held(r) == tables[r], (r, lay.ranges)
        # the ledger's sealed ranges: every move applied over the home, in order
        want: tuple = ((home, 0, n),)
        for r, a, b in lay.moved:
            want = reassign(want, a, b, r)
        assert lay.sealed() == [list(s) for s in want if s[2] > s[1]]
