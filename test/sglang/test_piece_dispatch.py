"""The controller's piece books (sglang/piece_books.py, issue 26 parts 2-4): ranks' reports
feed the directory, and ``DcpDispatcher`` places a prompt extending a cached layout on it (home
pinned to the cached tail, head pieces booked where they lie), the pieces leaving the directory.
Without SGLang."""

import random
from types import SimpleNamespace

import pytest

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.planner.pieces import KEY_PAGE, pieces_of
from sglang_dcp.sglang.dispatcher import DcpDispatcher
from sglang_dcp.sglang.piece_books import PieceBooks

RANKS, CAP, PAGE = 4, 4096, 64


def _ids(n, seed):
    rng = random.Random(seed)
    return [rng.randrange(3, 500) for _ in range(n)]


def _req(rid, ids, max_new=8):
    return SimpleNamespace(rid=rid, input_ids=ids, routed_dp_rank=None,
                           sampling_params=SimpleNamespace(max_new_tokens=max_new))


def _report(rid, ranges, tokens, rank=0, evicted=None):
    ps = pieces_of(rid, ranges, tokens, KEY_PAGE)
    return SimpleNamespace(dcp_rank=rank, rid=rid, cached=[[p.rank, p.start, p.end] for p in ps],
                           keys=[p.key.hex() for p in ps], evicted=evicted)  # fmt: skip


@pytest.fixture
def setup():
    sent, views, adopts = [], [], []
    policy = make_policy("dcp", ClusterSpec.uniform(RANKS, CAP, PAGE),
                         load_profile("qwen3-235b-h200"), max_degree=RANKS)  # fmt: skip
    d = DcpDispatcher(policy, send=lambda rank, req, p: sent.append((req.rid, rank, p)),
                      reject=lambda req, reason: sent.append((req.rid, None, reason)),
                      active_ranks=lambda: range(RANKS), queue=True)  # fmt: skip
    d.pieces = PieceBooks(RANKS, views.append, lambda rid, lay: adopts.append((rid, lay)))
    return d, sent, views, adopts


def test_the_next_turn_is_placed_on_the_cached_layout(setup):
    d, sent, views, adopts = setup
    ctx = _ids(1000, 1)
    d.pieces.on_pieces(_report("t1", [(1, 0, 384), (3, 384, 768), (2, 768, 1000)], ctx))
    assert views[-1] == [0, 384, 232, 384]
    turn2 = ctx + _ids(200, 2)
    d.dispatch(_req("t2", turn2))
    rid, rank, p = sent[-1]
    assert (rid, rank) == ("t2", 2)
    assert [(s.rank, s.start) for s in p.shards] == [(1, 0), (3, 384), (2, 768)]
    assert p.shards[-1].end == len(turn2)  # the tail grows from the prompt, as planned
    booked = d.policy.placement("t2")
    assert [(s.rank, s.start, s.end) for s in booked.shards[:-1]] == [(1, 0, 384), (3, 384, 768)]
    assert booked.shards[-1].start == 768 and booked.home_rank == 2
    assert adopts[-1][0] == "t2" and adopts[-1][1].cached == 1000
    assert views[-1] == [0, 0, 0, 0]  # adopted: live KV now, out of the directory
    assert "t2" in d.pieces.adopting


def test_a_layout_on_one_rank_or_another_prompt_is_placed_as_usual(setup):
    d, sent, _, adopts = setup
    ctx = _ids(1000, 3)
    d.pieces.on_pieces(_report("t1", [(2, 0, 1000)], ctx))
    d.dispatch(_req("a", ctx + _ids(10, 4)))  # one rank: its tree's business, not pieces'
    d.dispatch(_req("b", _ids(1200, 5)))
    assert not adopts and not d.pieces.adopting and len(sent) == 2


def test_evictions_and_bad_reports(setup):
    d, _, views, _ = setup
    ctx = _ids(500, 6)
    d.pieces.on_pieces(_report("t1", [(1, 0, 256), (0, 256, 500)], ctx))
    d.pieces.on_pieces(SimpleNamespace(dcp_rank=1, rid=None, cached=None, keys=None,
                                       evicted=[["t1", 0]]))  # fmt: skip
    assert views[-1] == [244, 0, 0, 0]
    assert d.pieces.directory.layout(ctx + [1]) is None  # the hole at token 0
    bad = _report("t3", [(1, 0, 64)], ctx)
    bad.keys = []
    with pytest.raises(ValueError, match="1 ranges but 0 keys"):
        d.pieces.on_pieces(bad)
