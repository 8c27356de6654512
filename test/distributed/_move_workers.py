"""Spawn targets of the device-strict move tests: ``shipping.ship`` over SGLang's own allocators
and KV pools (MHA and MLA, paged and unpaged) inside ``testing.device_guard.DeviceGuard``, where
a host tensor handed to the device pool, or a host sync past the two per batch that confirm the
moves, raises as it would on a GPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from sglang_dcp.exchange.comm import TorchDistCommunicator
from sglang_dcp.exchange.spawn import init_rank
from sglang_dcp.planner.base import Migration
from sglang_dcp.testing.device_guard import DeviceGuard

CONFIGS = [("mha", 1), ("mha", 4), ("mla", 1), ("mla", 4)]  # (attention, page size)
SIZE, LAYERS = 64, 2
MOVE_SYNCS = 2  # per ship(): the gathered status and the gathered confirmations


def _pools(attention: str, page: int):
    """SGLang's KV pool and allocator for ``attention`` on the guard's (virtual) device."""
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool, ReqToTokenPool

    if attention == "mla":
        kv = MLATokenToKVPool(SIZE, page, torch.float32, 32, 16, LAYERS, "cpu", False)
    else:
        kv = MHATokenToKVPool(SIZE, page, torch.float32, 2, 8, LAYERS, "cpu", False)
    if page == 1:
        alloc = TokenToKVPoolAllocator(SIZE, torch.float32, "cpu", kv, False)
    else:
        alloc = PagedTokenToKVPoolAllocator(SIZE, page, torch.float32, "cpu", kv, False)
    return kv, alloc, ReqToTokenPool(4, SIZE, "cpu", False)


def _rank(rank: int, comm, *, attention: str, page: int, guard: DeviceGuard) -> dict:
    from sglang_dcp.sglang import move_reserve
    from sglang_dcp.sglang.entries import HomeEntry
    from sglang_dcp.sglang.layout import KvLayout
    from sglang_dcp.sglang.ledger import RankLedger
    from sglang_dcp.sglang.mla import pool_layers
    from sglang_dcp.sglang.shipping import ship

    kv, alloc, req_pool = _pools(attention, page)
    move_reserve.reserve("cpu", 1)
    k_layers, _ = pool_layers(kv)
    req = SimpleNamespace(rid="a", kv=SimpleNamespace(req_pool_idx=0), dcp=None)
    rt = SimpleNamespace(
        rank=rank, comm=comm, scheduler=SimpleNamespace(token_to_kv_pool_allocator=alloc),
        home={"a": HomeEntry(req, KvLayout("a", 0))} if rank == 0 else {}, guests={},
        ledger=RankLedger(rank, send=lambda inbox, msg: None), num_steps=0,
    )  # fmt: skip
    runner = SimpleNamespace(token_to_kv_pool=kv, req_to_token_pool=req_pool)
    sent = None
    if rank == 0:  # the home prefilled 16 tokens of "a"
        slots = alloc.alloc(16)
        req_pool.req_to_token[0, :16] = slots.to(req_pool.req_to_token.dtype)
        for i, buf in enumerate(k_layers):
            buf[slots] = torch.arange(16 * buf[0].numel(), dtype=buf.dtype, device="cpu").view(
                16, *buf.shape[1:]) + 1000 * i  # fmt: skip
        sent = torch.stack([buf[slots[4:12]] for buf in k_layers])
    free0 = alloc.available_size()
    guard.syncs.clear()
    # first-decode shipping: two moves in one batch, still two host syncs in all
    failed = ship(rt, [Migration("a", 0, 1, 4, 8), Migration("a", 0, 1, 8, 12)], runner, {"a": 0})
    out = {"failed": len(failed), "syncs": len(guard.syncs), "freed": alloc.available_size() - free0}
    if rank == 1:
        g = rt.guests["a"]
        out["guest_on_device"] = guard.on_device(g.slots)
        got = torch.stack([buf[g.slots] for buf in k_layers])
        torch.distributed.send(got.contiguous(), dst=0)
    else:
        got = torch.empty_like(sent)
        torch.distributed.recv(got, src=1)
        out["bytes_equal"] = bool(torch.equal(got, sent))
        out["moved"] = [list(x) for x in rt.home["a"].layout.moved]
    # migrations back home: the ranges rejoin the home's req_to_token row
    guard.syncs.clear()
    failed = ship(rt, [Migration("a", 1, 0, 4, 8), Migration("a", 1, 0, 8, 12)], runner, {"a": 0})
    out["back_failed"], out["back_syncs"] = len(failed), len(guard.syncs)
    out["guest_left"] = "a" in rt.guests
    return out


def device_strict_ship_worker(rank, world_size, init_method, backend, out_path) -> None:
    comm = TorchDistCommunicator(init_rank(rank, world_size, init_method, backend))
    results = {}
    for attention, page in CONFIGS:
        from sglang_dcp.sglang.context import ctx

        ctx().move_staging = None  # each config reserves inside its own guard
        with DeviceGuard(max_syncs=MOVE_SYNCS) as guard:
            results[f"{attention}/{page}"] = _rank(rank, comm, attention=attention, page=page, guard=guard)
    with open(out_path.format(rank=rank), "w") as f:
        json.dump(results, f)
