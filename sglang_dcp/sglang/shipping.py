"""Shard moves on the scheduler side: run a step's moves through ``exchange.transfer_shards`` over
SGLang's allocator and KV buffers, then update the home's moved ranges, the guests' table, the
stats and the ledger (``rt``: this rank's ``datapath.RankRuntime``). Under
``SGLANG_DCP_POISON_MOVED=1`` the home's copy of every shipped range is overwritten with NaN and
the ranks check that nothing they read is poisoned.
"""

from __future__ import annotations

import logging

import torch

from sglang_dcp import env
from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang.mla import pool_layers
from sglang_dcp.sglang.rank_stats import stats

logger = logging.getLogger(__name__)


def ship(rt, moves: list[Migration], model_runner) -> list[Migration]:
    """Run every rank's moves of this step; returns the failed ones (same list everywhere)."""
    from sglang_dcp.exchange.faults import move_faults
    from sglang_dcp.sglang.datapath import GuestEntry
    from sglang_dcp.exchange.transfer import transfer_shards
    from sglang_dcp.sglang.kv_adapter import SGLangKVPool

    k_layers, v_layers = pool_layers(model_runner.token_to_kv_pool)  # MLA: latent only
    pool = SGLangKVPool(rt.scheduler.token_to_kv_pool_allocator, k_layers, v_layers)
    req_to_token = model_runner.req_to_token_pool.req_to_token
    offered = {}
    for m in moves:
        if m.src == rt.rank:
            req = rt.home[m.rid].req
            row = req_to_token[req.kv.req_pool_idx]
            offered[(m.rid, m.start)] = row[m.start : m.end].to(torch.long)
            pool.offer(m.rid, m.start, offered[(m.rid, m.start)].cpu())
    fault = move_faults(moves, env.inject_move_failure(), env.inject_move_failure_rid())  # tests
    results = transfer_shards(rt.comm, pool, moves, fault=fault)
    if env.poison_moved():
        for res in results:
            m = res.move
            if res.ok and m.src == rt.rank:
                slots = offered[(m.rid, m.start)]
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
        if not mine:
            continue
        s.moves_done += 1
        if m.src == rt.rank:
            logger.info(
                "sglang_dcp: shipped tokens [%d, %d) of %s from rank %d to rank %d",
                m.start, m.end, m.rid, m.src, m.dst,
            )  # fmt: skip
            h = rt.home[m.rid]
            h.moved.append((m.dst, m.start, m.end))
            idx = h.req.kv.req_pool_idx
            rt.moved_rows.setdefault(idx, []).append((m.start, m.end))
        else:
            slots = pool.slot_tensor((m.rid, m.start))
            g = rt.guests.get(m.rid)
            if g is None:
                rt.guests[m.rid] = GuestEntry(m.src, [(m.start, m.end)], slots)
            else:
                pairs = sorted(
                    [*zip(g.ranges, _split(g.slots, g.ranges)), ((m.start, m.end), slots)]
                )
                g.ranges = [r for r, _ in pairs]
                g.slots = torch.cat([t for _, t in pairs])
            s.moved_tokens += m.end - m.start
    rt.ledger.shipped(results, rt.home)
    return failed


def check_not_poisoned(rt, local_batch, model_runner) -> None:
    """Debug check under ``SGLANG_DCP_POISON_MOVED=1``: no KV this rank is about to read
    for its decode rows (all but the newest token, minus shipped ranges) is NaN."""
    k = pool_layers(model_runner.token_to_kv_pool)[0][0]
    req_to_token = model_runner.req_to_token_pool.req_to_token
    for req, seq_len in zip(local_batch.reqs, local_batch.seq_lens_cpu.tolist()):
        moved = rt.moved_rows.get(req.kv.req_pool_idx, [])
        ranges = _subtract([(0, int(seq_len) - 1)], moved)
        for a, b in ranges:
            slots = req_to_token[req.kv.req_pool_idx, a:b].to(torch.long)
            bad = torch.isnan(k[slots].float()).flatten(1).any(dim=1).nonzero().flatten()
            if bad.numel():
                logger.error(
                    "sglang_dcp: rank %d step %d: %s (seq_len %d, pool row %d) reads "
                    "poisoned KV at positions %s (slots %s); moved rows %s",
                    rt.rank, rt.num_steps, req.rid, seq_len, req.kv.req_pool_idx,
                    (bad + a).tolist()[:8], slots[bad].tolist()[:8],
                    rt.moved_rows,
                )  # fmt: skip


def _split(slots: torch.Tensor, ranges: list[tuple[int, int]]) -> list[torch.Tensor]:
    out, pos = [], 0
    for a, b in ranges:
        out.append(slots[pos : pos + b - a])
        pos += b - a
    return out


def _subtract(ranges, cut):
    from sglang_dcp.sglang.datapath import _subtract as sub

    return sub(ranges, cut)


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
