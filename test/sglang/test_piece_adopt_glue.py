"""The home's side of an adoption in SGLang's calls (sglang/piece_adopt.py, issue 26 part 3):
the adopted prefix becomes the request's match on its first prefill only, and its first chunk
records the away ranges as moved. Without a server (test/distributed/test_piece_adopt.py has
the ranks' agreement, test/e2e/test_prefix_cache.py the whole path)."""

from types import SimpleNamespace

import torch

from sglang_dcp.sglang import context, piece_adopt
from sglang_dcp.sglang.datapath import RankRuntime
from sglang_dcp.sglang.entries import HomeEntry
from sglang_dcp.types import Placement, Shard


def _setup():
    p = Placement("t2", 0, (Shard(1, 0, 64), Shard(2, 64, 128), Shard(0, 128, 400)))
    req = SimpleNamespace(rid="t2", dcp=p, prefix_indices=torch.empty(0, dtype=torch.int64),
                          is_retracted=False, kv=SimpleNamespace(req_pool_idx=3))  # fmt: skip
    reports = []
    rt = object.__new__(RankRuntime)  # the runtime's state this path reads
    rt.split_reqs, rt.home = {"t2": req}, {}
    rt.ledger = SimpleNamespace(layout=lambda rid, home: reports.append(rid))
    prefix = torch.zeros(150, dtype=torch.int64)
    prefix[128:] = torch.arange(500, 522)
    rt.adoptions = {"t2": piece_adopt.Adoption(150, [(1, 0, 64), (2, 64, 128)], prefix)}
    return rt, req, reports


def test_the_adopted_prefix_is_the_match_of_the_first_prefill_only():
    rt, req, reports = _setup()
    old = context.use(context.RankContext(runtime=rt))
    try:
        piece_adopt.after_init_next_round_input(None, req, None)  # no tree asked: untouched
        assert req.prefix_indices.numel() == 0
        piece_adopt.after_init_next_round_input(None, req, object())
        assert req.prefix_indices is rt.adoptions["t2"].prefix
        assert rt.adoptions["t2"].req is req
        h = rt.home["t2"] = HomeEntry(req)
        piece_adopt.start(rt, req, h)  # its first chunk's header
        assert h.layout.moved == ((1, 0, 64), (2, 64, 128)) and h.layout.offered == 150
        assert h.layout.skip_rows() == [(0, 64), (64, 128)] and reports == ["t2"]
        assert not rt.adoptions and piece_adopt.pending_tokens(rt) == 0
        req.prefix_indices = torch.arange(7)  # later rounds keep SGLang's own prefix
        piece_adopt.after_init_next_round_input(None, req, object())
        assert req.prefix_indices.tolist() == list(range(7))
    finally:
        context.use(old)
