"""Cached pieces of split requests: keys, the directory, layouts and placements on them
(planner/pieces.py, issue 26 parts 2-4)."""

import random

import pytest

from sglang_dcp.planner.pieces import (
    CachedLayout, PieceDirectory, PrefixKeys, pieces_of, placement_on, prefix_key,
)  # fmt: skip
from sglang_dcp.types import Shard

PAGE = 16


def _ids(n, seed=0):
    rng = random.Random(seed)
    return [rng.randrange(3, 50_000) for _ in range(n)]


def _turn1(d, rid="t1", seed=1):
    """A 300-token context on ranks 1, 2 and home 0 (ranges at 128 and 256)."""
    toks = _ids(300, seed)
    d.cache(pieces_of(rid, [(1, 0, 128), (2, 128, 256), (0, 256, 300)], toks, PAGE))
    return toks


def test_a_key_names_the_whole_prefix_up_to_its_end():
    a = _ids(100, 1)
    ka = PrefixKeys(a, PAGE)
    assert ka.at(64) == prefix_key(a, 64, PAGE) == prefix_key(a + _ids(50, 2), 64, PAGE)
    assert ka.at(70) == prefix_key(a[:70], 70, PAGE)  # a partial last page
    assert len({ka.at(e) for e in range(1, 101)}) == 100  # every end its own key
    b = list(a)
    b[3] += 1  # one early token differs: every key from there on differs
    kb = PrefixKeys(b, PAGE)
    assert all(ka.at(e) != kb.at(e) for e in range(4, 101))
    assert ka.at(3) == kb.at(3)
    with pytest.raises(ValueError, match="outside"):
        ka.at(0)
    with pytest.raises(ValueError, match="outside"):
        ka.at(101)


def test_the_next_turn_finds_the_whole_cached_layout():
    d = PieceDirectory(4, PAGE)
    toks = _turn1(d)
    turn2 = toks + _ids(200, 9)
    lay = d.layout(turn2)
    assert [(p.rank, p.start, p.end) for p in lay.pieces] == [(1, 0, 128), (2, 128, 256),
                                                               (0, 256, 300)]  # fmt: skip
    assert lay.cached == 300 and lay.home == 0
    # the same prompt again: its last token is always prefilled, so the tail piece cannot serve
    assert d.layout(toks).cached == 256
    assert d.layout(toks[:256]).cached == 128
    assert d.layout(toks[:127]) is None
    assert d.layout(_ids(500, 5)) is None  # another context


def test_a_piece_is_used_only_if_its_whole_key_matches():
    d = PieceDirectory(4, PAGE)
    toks = _turn1(d)
    edited = list(toks)
    edited[200] += 1  # inside the second piece: only the first piece still matches
    assert d.layout(edited + _ids(10, 3)).cached == 128
    edited = list(toks)
    edited[299] += 1  # the tail's last token: the tail does not match
    assert d.layout(edited + _ids(10, 3)).cached == 256


def test_the_longest_layout_wins_and_branches_share_their_pieces():
    d = PieceDirectory(4, PAGE)
    toks = _turn1(d)
    # a second session branched after 256 tokens, its tail on rank 3
    branch = toks[:256] + _ids(100, 7)
    d.cache(pieces_of("b1", [(3, 256, 356)], branch, PAGE))
    lay = d.layout(branch + _ids(5, 8))
    assert [(p.rank, p.end) for p in lay.pieces] == [(1, 128), (2, 256), (3, 356)]
    assert d.layout(toks + [1]).home == 0
    # the same prefix cached twice: fewer pieces win, then lower ranks
    d.cache(pieces_of("w", [(3, 0, 256)], toks, PAGE))
    assert [(p.rank, p.end) for p in d.layout(toks + [1]).pieces] == [(3, 256), (0, 300)]


def test_taken_and_evicted_pieces_leave_the_directory():
    d = PieceDirectory(4, PAGE)
    toks = _turn1(d)
    lay = d.layout(toks + [5])
    d.take(lay)  # adopted by the next turn: live, no longer cached
    assert d.layout(toks + [5]) is None and all(not d.owners(r) for r in range(4))
    d.evicted(1, [("t1", 0)])  # a late report of a taken piece is a no-op
    toks = _turn1(d, "t2")
    d.evicted(2, [("t2", 128)])
    assert d.layout(toks + [5]).cached == 128  # the run stops at the hole
    assert d.tokens(1) == 128 and d.tokens(2) == 0


def test_reconcile_makes_the_directory_equal_what_a_rank_holds():
    d = PieceDirectory(4, PAGE)
    _turn1(d)
    assert d.reconcile(1, [("t1", 0)]) == []
    assert d.reconcile(2, [("zz", 0)]) == [("zz", 0)]  # unknown to the directory: free it
    assert d.owners(2) == set() and d.owners(1) == {("t1", 0)}


def test_placement_on_a_layout_keeps_pieces_and_grows_the_tail():
    d = PieceDirectory(4, PAGE)
    toks = _turn1(d)
    lay = d.layout(toks + _ids(200, 2))
    p = placement_on(lay, "t2", total_tokens=600, free_kv=[400, 0, 0, 0])
    assert p.home_rank == 0
    assert p.shards == (Shard(1, 0, 128), Shard(2, 128, 256), Shard(0, 256, 600))
    assert placement_on(lay, "t2", total_tokens=600, free_kv=[299, 9999, 9999, 9999]) is None
    with pytest.raises(ValueError, match="do not extend"):
        placement_on(lay, "t2", total_tokens=300, free_kv=[400] * 4)
    with pytest.raises(ValueError, match="empty"):
        placement_on(CachedLayout(()), "t2", total_tokens=10, free_kv=[400] * 4)


def test_random_reports_keep_layouts_contiguous_and_matching():
    rng = random.Random(0)
    d = PieceDirectory(4, PAGE)
    contexts = {}
    for i in range(40):
        rid = f"r{i}"
        base = contexts.get(rng.randrange(6)) if contexts else None
        toks = (base or []) + _ids(rng.randrange(20, 200), i)
        cuts = sorted({0, len(toks), *(rng.randrange(1, len(toks)) for _ in range(2))})
        d.cache(pieces_of(rid, [(rng.randrange(4), a, b) for a, b in zip(cuts, cuts[1:])],
                          toks, PAGE))  # fmt: skip
        contexts[i % 6] = toks
        if rng.random() < 0.3:
            r = rng.randrange(4)
            d.evicted(r, rng.sample(sorted(d.owners(r)), min(2, len(d.owners(r)))))
        probe = contexts[rng.randrange(len(contexts))] + [7]
        lay = d.layout(probe)
        if lay is None:
            continue
        pos = 0
        for p in lay.pieces:
            assert p.start == pos and p.key == prefix_key(probe, p.end, PAGE)
            assert p.owner in d.owners(p.rank)
            pos = p.end
        assert pos <= len(probe) - 1
