"""A finished split request leaves its ranges cached (sglang/piece_release.py, issue 26 part 2):
guests keep their ranges, the home its whole pages of a request that finished normally, the home
reports every range with its prefix key, every rank its evictions. Without a server (the
e2e side is test/e2e/test_prefix_cache.py)."""

from types import SimpleNamespace

import torch

from sglang_dcp.planner.pieces import KEY_PAGE, prefix_key
from sglang_dcp.sglang import piece_release
from sglang_dcp.sglang.entries import GuestEntry, HomeEntry
from sglang_dcp.sglang.layout import KvLayout
from sglang_dcp.sglang.piece_cache import PieceCache
from sglang_dcp.sglang.rank_stats import RankStats
from sglang_dcp.types import Placement, Shard


class _Alloc:
    page_size = 1

    def __init__(self):
        self.freed = []

    def free(self, slots):
        self.freed.append(slots)


class FINISH_LENGTH:  # SGLang's finish reasons are told apart by class name here
    pass


class FINISH_ABORT:
    pass


def _rt(rank, page=1):
    sent = []
    alloc = _Alloc()
    tree = SimpleNamespace(is_chunk_cache=lambda: False)
    row = torch.arange(1000, 1300, dtype=torch.int32).reshape(1, 300)
    rt = SimpleNamespace(
        rank=rank, page=page, home={}, guests={}, piece_cache=PieceCache(alloc),
        scheduler=SimpleNamespace(tree_cache=tree, token_to_kv_pool_allocator=alloc,
                                  req_to_token_pool=SimpleNamespace(req_to_token=row)),
        ledger=SimpleNamespace(inbox="inbox", pending=[], _send=lambda inbox, m: sent.append(m)),
    )  # fmt: skip
    return rt, sent


def _req(reason=FINISH_LENGTH):
    p = Placement("t1", 0, (Shard(1, 0, 128), Shard(2, 128, 192), Shard(0, 192, 300)))
    ids = list(range(7, 257))
    return SimpleNamespace(rid="t1", dcp=p, origin_input_ids=ids, output_ids=list(range(9)),
                           finished=lambda: True, finished_reason=reason(),
                           kv=SimpleNamespace(req_pool_idx=0))  # fmt: skip


def test_a_guest_keeps_its_ranges_as_pieces():
    rt, _ = _rt(1)
    g = GuestEntry.new("t1", 0, 1, [(0, 64), (64, 128)], torch.arange(500, 628))
    assert piece_release.keep_guest(rt, "t1", g)
    assert rt.piece_cache.owners() == [("t1", 0), ("t1", 64)] and rt.piece_cache.tokens == 128
    rt.scheduler.tree_cache = SimpleNamespace(is_chunk_cache=lambda: True)  # no radix cache
    assert not piece_release.keep_guest(rt, "t2", g)


def test_the_home_keeps_and_reports_its_pages_of_a_finished_request():
    rt, sent = _rt(0, page=4)
    req = _req()
    rt.home["t1"] = HomeEntry(req, KvLayout.of(req.dcp, [(1, 0, 128), (2, 128, 192)]))
    kept = piece_release.home_ranges(rt, req)
    assert kept == [(192, 256)]  # KV written: 250 prompt + 9 outputs - 1 = 258; whole pages: 256
    piece_release.keep_home(rt, req, kept)
    slots = rt.piece_cache.take(("t1", 192))
    assert slots.dtype == torch.int64 and slots.tolist() == list(range(1192, 1256))
    piece_release.report(rt, req, kept)
    msg = sent[-1]
    assert msg.rid == "t1" and msg.cached == [[1, 0, 128], [2, 128, 192], [0, 192, 256]]
    tokens = req.origin_input_ids + req.output_ids
    assert msg.keys == [prefix_key(tokens, e, KEY_PAGE).hex() for e in (128, 192, 256)]


def test_the_home_keeps_no_piece_of_its_trees_slots():
    rt, _ = _rt(0, page=4)
    req = _req()
    req.kv.cache_protected_len = 224  # its first prefill matched [0, 224) in the home's tree
    rt.home["t1"] = HomeEntry(req, KvLayout.of(req.dcp, [(1, 0, 128), (2, 128, 192)]))
    assert piece_release.home_ranges(rt, req) == [(224, 256)]  # tree_prefix.clip


def test_an_aborted_request_leaves_only_its_guest_ranges(monkeypatch):
    rt, sent = _rt(0)
    req = _req(FINISH_ABORT)
    rt.home["t1"] = HomeEntry(req, KvLayout.of(req.dcp, [(1, 0, 128)]))
    assert piece_release.home_ranges(rt, req) == []
    piece_release.report(rt, req, [])
    assert sent[-1].cached == [[1, 0, 128]]


def test_evictions_are_reported_once(monkeypatch):
    from sglang_dcp.sglang import context

    old = context.use(context.RankContext(stats=RankStats()))
    try:
        rt, sent = _rt(2)
        rt.piece_cache.put(("a", 0), torch.arange(10))
        rt.piece_cache.evict(5)
        piece_release.flush_evictions(rt)
        piece_release.flush_evictions(rt)
        assert [m.evicted for m in sent] == [[["a", 0]]]
        assert context.ctx().stats.pieces_evicted == 1
    finally:
        context.use(old)
