"""Spawn target of test_piece_adopt.py: ``piece_adopt.on_adopt`` on three gloo ranks over SGLang's
own allocator (home 0, guests 1 and 2)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sglang_dcp.exchange.spawn import init_rank

PIECES = [[1, 0, 64, "t1", 0], [2, 64, 128, "t1", 64], [0, 128, 150, "t1", 128]]


def _rank_runtime(rank, world_size, group):
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    kv = MHATokenToKVPool(256, 1, torch.float32, 2, 8, 1, "cpu", False)
    alloc = TokenToKVPoolAllocator(256, torch.float32, "cpu", kv, False)
    from sglang_dcp.sglang.datapath import RankRuntime

    held = []
    rt = object.__new__(RankRuntime)  # the runtime's state this path reads, no TP group
    rt.rank, rt.num_ranks, rt.guests = rank, world_size, {}
    rt.tp_group = SimpleNamespace(cpu_group=group)
    rt.scheduler = SimpleNamespace(token_to_kv_pool_allocator=alloc,
                                   handle_generate_request=held.append)  # fmt: skip
    return rt, alloc, held


def adopt_worker(rank: int, world_size: int, init_method: str, backend: str):
    """Every case in one spawn (SGLang's import dominates): rank ``missing`` lost its piece
    before the adoption (-1: none did)."""
    group = init_rank(rank, world_size, init_method, backend)
    for missing in (-1, 2, 1, 0):
        _case(rank, world_size, group, missing)


def _case(rank, world_size, group, missing):
    from sglang_dcp.sglang import piece_adopt
    from sglang_dcp.sglang.radix_pieces import of_runtime

    rt, alloc, held = _rank_runtime(rank, world_size, group)
    pc = of_runtime(rt)
    free0 = alloc.available_size()
    r, a, b, o, s = next(p for p in PIECES if p[0] == rank)
    slots = alloc.alloc(b - a)
    pc.put((o, s), slots)
    if rank == missing:
        pc.evict(b - a)  # evicted between placement and use
        pc.drain_evicted()
    waiting = SimpleNamespace(rid="t2", dcp_adopt=True)
    if rank == 0:  # the request reached its home first: held until the DcpAdopt
        assert piece_adopt.hold(rt, waiting)
    piece_adopt.on_adopt(rt, SimpleNamespace(rid="t2", home=0, pieces=PIECES))
    run = {-1: 3, 1: 0, 2: 1, 0: 2}[missing]
    cached = PIECES[run - 1][2] if run else 0
    mine = PIECES.index([r, a, b, o, s])
    if rank != 0:
        g = rt.guests.get("t2")
        if mine < run:
            assert g is not None and g.home == 0 and g.layout.held(rank) == [(a, b)]
            assert torch.equal(g.slots, slots.to(g.slots.dtype)), "adopted slots changed"
        else:
            assert g is None
    else:
        ad = rt.adoptions["t2"]
        assert ad.cached == cached, (ad.cached, cached)
        assert ad.away == [tuple(p[:3]) for p in PIECES[:run] if p[0] != 0]
        if cached:
            assert ad.prefix.shape == (cached,) and ad.prefix.dtype == torch.int64
            assert not ad.prefix[:128].any()  # away tokens point at slot 0, never read
            if cached == 150:
                assert torch.equal(ad.prefix[128:150], slots.to(torch.int64))
        assert held == [waiting] and not piece_adopt.hold(rt, waiting)
        # until its first chunk, SGLang's idle pool check counts the home's adopted slots
        assert piece_adopt.pending_tokens(rt) == (22 if cached == 150 else 0)
    assert pc.tokens == 0, "a piece outside the run stayed cached"
    if mine >= run and rank != missing:  # the directory let it go: freed, reported
        assert pc.drain_evicted() == [(o, s)] and alloc.available_size() == free0


def reap_check() -> None:
    """``piece_adopt.reap`` without a group: an adoption whose request ended unprefilled."""
    from sglang_dcp.planner.pieces import KEY_PAGE, prefix_key
    from sglang_dcp.sglang import piece_adopt

    sent = []
    rt, alloc, _ = _rank_runtime(0, 3, None)
    rt.releases, rt.split_reqs = [], {}
    rt.ledger = SimpleNamespace(inbox="x", pending=[], _send=lambda inbox, m: sent.append(m))
    free0 = alloc.available_size()
    own = alloc.alloc(22)
    prefix = torch.zeros(150, dtype=torch.int64)
    prefix[128:150] = own
    ids = list(range(3, 203))
    req = SimpleNamespace(rid="t2", origin_input_ids=ids, finished=lambda: False,
                          kv=SimpleNamespace(req_pool_idx=None))  # fmt: skip
    ad = piece_adopt.Adoption(150, [(1, 0, 64), (2, 64, 128)], prefix, req)
    rt.adoptions = {"t2": ad}
    rt.split_reqs["t2"] = req
    piece_adopt.reap(rt)  # still queued: nothing happens
    assert rt.adoptions and piece_adopt.pending_tokens(rt) == 22
    req.finished = lambda: True  # aborted while queued
    piece_adopt.reap(rt)
    assert not rt.adoptions and not rt.split_reqs and rt.releases == ["t2"]
    assert alloc.available_size() == free0  # the home's adopted slots are back
    (msg,) = sent
    assert msg.cached == [[1, 0, 64], [2, 64, 128]]
    assert msg.keys == [prefix_key(ids, e, KEY_PAGE).hex() for e in (64, 128)]
