"""Shard moves on the scheduler side: run a step's moves through ``exchange.transfer_shards`` over
SGLang's allocator and KV buffers, then update the home's moved ranges, the guests' table, the
stats and the ledger (``rt``: this rank's ``datapath.RankRuntime``). Under
``SGLANG_DCP_POISON_MOVED=1`` the home's copy of every shipped range is overwritten with NaN and
the ranks check that nothing they read is poisoned (except slots its radix tree owns: a split
request's match stays the tree's, valid, ``tree_prefix.py``).
"""

from __future__ import annotations

import logging

import torch

from sglang_dcp import env
from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang.mla import pool_layers
from sglang_dcp.sglang.context import stats
from sglang_dcp.sglang.layout import subtract
from sglang_dcp.sglang.tree_prefix import keep, protected, rejoin

logger = logging.getLogger(__name__)


def ship(rt, moves: list[Migration], model_runner, homes: dict[str, int]) -> list[Migration]:
    """Run every rank's moves of this step (``homes``: each moved request's home rank, from
    the header); returns the failed ones (same list everywhere).

    A move's source is the home (a range of its ``req_to_token`` row: the first-decode
    shipping, or a migration of a range still at home) or a guest (a range of its guest
    slots: a migration); its destination a guest or the home (the range rejoins the row)."""
    from sglang_dcp.exchange.transfer import transfer_shards
    from sglang_dcp.sglang.entries import GuestEntry
    from sglang_dcp.sglang.kv_adapter import SGLangKVPool
    from sglang_dcp.sglang import move_reserve
    from sglang_dcp.sglang.migration import move_fault_hook

    k_layers, v_layers = pool_layers(model_runner.token_to_kv_pool)  # MLA: latent only
    sched = rt.scheduler
    pool = SGLangKVPool(sched.token_to_kv_pool_allocator, k_layers, v_layers,
                        tree_cache=getattr(sched, "tree_cache", None))
    req_to_token = model_runner.req_to_token_pool.req_to_token
    offered = {}
    for m in moves:
        if m.src == rt.rank:
            slots = _source_slots(rt, m, req_to_token)
            if slots is not None:  # else the transfer fails it: "holds no shard"
                h = rt.home.get(m.rid)  # the home's tree owns its match (tree_prefix.py)
                k = keep(protected(h.req), m.start, m.end) if h is not None else 0
                offered[(m.rid, m.start)] = slots[k:]  # the request's own: freed, poisoned
                pool.offer(m.rid, m.start, slots, keep=k)  # on the pool's device
    # the home knows which moves are migrations (its request shipped at an earlier step)
    migrating = {(m.rid, m.start) for m in moves if m.rid in rt.home and rt.home[m.rid].shipped}
    fault = move_fault_hook(moves, env.inject_move_failure(), env.test_migrate_fail(), homes,
                            env.inject_move_failure_rid())  # testing only
    results = transfer_shards(rt.comm, pool, moves, fault=fault, staging=move_reserve.staging())
    if env.poison_moved():
        for res in results:
            m = res.move
            if res.ok and m.src == rt.rank:
                slots = offered[(m.rid, m.start)]
                if not slots.numel():  # all the tree's: they stay valid for its next match
                    continue
                for buf in (*k_layers, *v_layers):
                    buf[slots] = float("nan")
                logger.info(
                    "sglang_dcp: poisoned slots %s..%s (%d) of %s [%d, %d)",
                    slots.min().item(), slots.max().item(), slots.numel(),
                    m.rid, m.start, m.end,
                )  # fmt: skip
    failed = []
    s = stats()
    for res in results:
        m = res.move
        mine = rt.rank in (m.src, m.dst)
        if not res.ok:
            failed.append(m)
            if mine:
                s.moves_failed += 1
                logger.warning("sglang_dcp: shard move %s failed: %s", m, res.reason)
            continue
        h = rt.home.get(m.rid)
        if h is not None:  # the home: where the range is now
            what = "migrated" if (m.rid, m.start) in migrating else "shipped"
            logger.info(
                "sglang_dcp: %s tokens [%d, %d) of %s from rank %d to rank %d",
                what, m.start, m.end, m.rid, m.src, m.dst,
            )  # fmt: skip
            h.layout = h.layout.with_move(m.dst, m.start, m.end)  # its row skips it if away
            if m.dst == rt.rank:  # rejoins the home's row (the tree's part: its own copy)
                rejoin(sched.token_to_kv_pool_allocator, req_to_token[h.req.kv.req_pool_idx],
                       pool.slot_tensor((m.rid, m.start)), m.start, protected(h.req))  # fmt: skip
        elif m.src == rt.rank:  # a guest gave its range away
            _drop_guest_range(rt, m)
        elif m.dst == rt.rank:
            slots = pool.slot_tensor((m.rid, m.start))
            g = rt.guests.get(m.rid)
            if g is None:
                rt.guests[m.rid] = GuestEntry.new(m.rid, homes[m.rid], rt.rank,
                                                  [(m.start, m.end)], slots)  # fmt: skip
            else:
                pairs = sorted([*g.parts(), ((m.start, m.end), slots)], key=lambda x: x[0])
                g.layout = g.layout.with_move(rt.rank, m.start, m.end)
                g.slots = torch.cat([t for _, t in pairs])
            s.moved_tokens += m.end - m.start
        if mine:
            s.moves_done += 1
        s.migrations_done += int((m.rid, m.start) in migrating)
    rt.ledger.shipped(results, rt.home)
    return failed


def _source_slots(rt, m: Migration, req_to_token) -> torch.Tensor | None:
    """This rank's slots of tokens ``[m.start, m.end)`` of ``m.rid`` (home row or guest)."""
    h = rt.home.get(m.rid)
    if h is not None:
        return req_to_token[h.req.kv.req_pool_idx, m.start : m.end].to(torch.long)
    g = rt.guests.get(m.rid)
    if g is None:
        return None
    for (a, b), part in g.parts():
        if a <= m.start and m.end <= b:
            return part[m.start - a : m.end - a]
    return None


def _drop_guest_range(rt, m: Migration) -> None:
    """The guest side of a migration away: its slots went back at the transfer's commit."""
    g = rt.guests[m.rid]
    keep = [
        part[x - a : y - a]
        for (a, b), part in g.parts()
        for x, y in subtract([(a, b)], [(m.start, m.end)])
    ]
    if not keep:
        del rt.guests[m.rid]
        return
    g.layout = g.layout.with_move(m.dst, m.start, m.end)
    g.slots = torch.cat(keep)


def free_guest(allocator, g) -> None:
    """Free a guest entry's slots (device tensors), one page-aligned range at a time."""
    from sglang_dcp.sglang.kv_adapter import free_slots

    for (a, _), part in g.parts():
        free_slots(allocator, part, a)


def check_not_poisoned(rt, local_batch, model_runner) -> None:
    """Debug check under ``SGLANG_DCP_POISON_MOVED=1``: no KV this rank is about to read
    for its decode rows (all but the newest token, minus shipped ranges) is NaN."""
    k = pool_layers(model_runner.token_to_kv_pool)[0][0]
    req_to_token = model_runner.req_to_token_pool.req_to_token
    for req, seq_len in zip(local_batch.reqs, local_batch.seq_lens_cpu.tolist()):
        moved = rt.row_ranges_to_skip(req.kv.req_pool_idx) or []
        ranges = subtract([(0, int(seq_len) - 1)], moved)
        for a, b in ranges:
            slots = req_to_token[req.kv.req_pool_idx, a:b].to(torch.long)
            bad = torch.isnan(k[slots].float()).flatten(1).any(dim=1).nonzero().flatten()
            if bad.numel():
                logger.error(
                    "sglang_dcp: rank %d step %d: %s (seq_len %d, pool row %d) reads "
                    "poisoned KV at positions %s (slots %s); moved rows %s",
                    rt.rank, rt.num_steps, req.rid, seq_len, req.kv.req_pool_idx,
                    (bad + a).tolist()[:8], slots[bad].tolist()[:8], moved,
                )  # fmt: skip


def check_rows(step, layer_id: int, rows: torch.Tensor, x: torch.Tensor, B: int) -> None:
    """Debug check under ``SGLANG_DCP_POISON_MOVED=1`` (syncs): a NaN output row read a
    poisoned (moved) slot; log whether it came from the exchange and for which request."""
    bad = torch.isnan(rows.float()).any(dim=1).nonzero().flatten().tolist()
    for i in bad:
        xi = int(x[i])
        rid = step.row_rids[xi] if step is not None and xi < len(step.row_rids) else None
        logger.error(
            "sglang_dcp: step %s layer %d row %d is NaN (%s)",
            getattr(step, "tag", "?"), layer_id, i,
            f"exchange row {xi}, {rid}" if xi < B else "SGLang's own attention",
        )  # fmt: skip
