"""One rank's part of a DCP step, built with host work O(split requests): which of its requests
decode split this step (the header's news) and its exchange route.

Nothing here walks the decode batch or the KV tokens. The requests this rank homes with a
multi-rank placement are tracked by the ``RankRuntime`` (``split_reqs``); which of them decode
now, and with how many KV tokens, comes from plan-time state only (``decodes_now``), so the
answer is the same with overlap scheduling on, where step N+1 is planned before step N's
results are processed. The route's slot containers are device views of ``req_to_token`` rows and
guest slot tensors (``exchange.static.Slots``), never Python lists. ``check_against_batch``
(debug, ``SGLANG_DCP_POISON_MOVED=1``) verifies both claims against the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sglang_dcp.exchange.extend_tiles import TileRoute, build_tile_route
from sglang_dcp.exchange.route import (
    RankRoute, build_rank_route, crosses_nodes, max_pair_items, part_ranks,
)
from sglang_dcp.exchange.static import Slots
from sglang_dcp.exchange.wire import bucket_for, node_ranks
from sglang_dcp.sglang.step import StepPlan


@dataclass(frozen=True, slots=True)
class DcpStep:
    """This rank's part of one active step: what the attention backend loads and runs.
    Immutable: built once per step by the header (``rank_step``, the same plan on every rank),
    loaded into the static exchange by the metadata calls (``backend_meta.MetadataCalls.load``)
    and read by the layers through a ``backend_meta.LayerCursor`` (a capture has its own cursor
    and no step).

    ``route`` home rows are this rank's split requests decoded this step (``row_keys``: their
    ``req_pool_idx``, in route order); every other batch row keeps SGLang's own attention."""

    plan: StepPlan
    rank: int
    num_ranks: int
    route: RankRoute
    row_keys: tuple[int, ...]
    tag: int
    rounds: int = 1  # exchange rounds per layer at the engine's capacity (> 1: eager)
    bucket: int = 1  # queries per peer pair the step's all-to-alls carry (wire.bucket_for)
    # the step's scope (wire.scope_peers): this rank's node's ranks when no split request has a
    # part off its home's node on a server of several nodes; None: every rank
    peers: tuple[int, ...] | None = None
    # prefill chunks (plan.chunks): their query rows homed here, by request pool index and by
    # rid: (first tile-exchange home row, chunk start, rows); such a step also runs the tile
    # exchange (``tiles``, ``exchange.tile_exchange``) and runs eagerly
    extend_rows: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    extend_rids: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    extend_capacity: int = 0  # rows per peer of the tile exchange's longest stream (0: none)
    tiles: TileRoute | None = None
    tile_slots: tuple = ((), {})  # (home span per home chunk, guest slots by rid)
    decode_split: bool = True  # some rank decodes a split request: the static exchange runs
    kv_slots: int = 0  # KV slots this rank's route reads
    reuses_route: RankRoute | None = None  # the previous step's route, only lengthened here
    decoded: list[bool] = field(default_factory=list)  # which ranks decoded (the header's view)
    # (batch row, KV tokens) of each home row (``row_keys`` order), from the host's batch lists:
    # the inner backend's host-side view of the batch is built from these, never from a device
    # tensor (``backend_meta.MetadataCalls._prepare``)
    batch_rows: tuple[tuple[int, int], ...] = ()
    row_rids: list[str] = field(default_factory=list)  # diagnostics: rid of each home row

    @property
    def active(self) -> bool:
        return self.plan.active

    @property
    def num_rows(self) -> int:
        return self.route.batch_size


def decodes_now(req, seen: int) -> bool:
    """Whether SGLang decodes ``req`` in the decode step being planned; ``seen``: its
    ``decode_batch_idx`` at this rank's previous header (0: none yet).

    SGLang's ``prepare_for_decode`` raises ``req.decode_batch_idx`` of every request in the batch
    it plans, just before the header runs (a retraction resets it to 0). ``output_ids`` and
    ``finished()`` would not do: with overlap on they lag one step (a request finished at step N
    is still in batch N+1; its first token is not in ``output_ids`` at its first decode)."""
    idx = req.decode_batch_idx
    return idx > 0 and idx != seen and req.kv.req_pool_idx is not None


def kv_len(req) -> int:
    """The KV tokens ``req`` has once the planned step ran (its newest token included): what
    SGLang's allocator committed at plan time (``kv.kv_committed_len``, the batch's
    ``seq_lens_cpu``), never ``req.seqlen``, which lags one step with overlap on."""
    return req.kv.kv_committed_len


def build_step(
    plan: StepPlan,
    *,
    rank: int,
    num_ranks: int,
    home_reqs: dict[str, Any],
    guest_slots: dict[str, Any],
    req_to_token,
    capacity: int,
    tag: int,
    ranks_per_node: int | None = None,
) -> DcpStep:
    """``home_reqs[rid]``: the SGLang ``Req`` of each request homed here and decoded this step;
    ``guest_slots[rid]``: this rank's guest slot tensor of a peer's request (token order);
    ``ranks_per_node``: the server's DP ranks per node (``None``: one node)."""
    placements = [p for p in plan.placements if len(part_ranks(p)) > 1]
    parts = {p.rid: part_ranks(p) for p in placements}
    local: dict[str, Slots] = {}
    keys: list[int] = []
    rids: list[str] = []
    for p in placements:
        if p.home_rank == rank:
            req = home_reqs[p.rid]
            idx = req.kv.req_pool_idx
            local[p.rid] = _home_slots(req_to_token[idx], p.shards, rank, p.shards[-1].end)
            keys.append(int(idx))
            rids.append(p.rid)
        elif rank in parts[p.rid]:
            local[p.rid] = Slots([_guest(guest_slots, p.rid, rank)], None)
    route = build_rank_route(
        placements, rank=rank, num_ranks=num_ranks, local_slots=local, parts=parts
    )
    pair = max_pair_items(placements, num_ranks, parts)
    rpn = ranks_per_node or num_ranks
    scoped = rpn < num_ranks and not crosses_nodes(placements, rpn, parts)
    step = DcpStep(
        plan, rank, num_ranks, route, tuple(keys), tag, row_rids=rids,
        rounds=max(1, -(-pair // capacity)), bucket=bucket_for(pair, capacity),
        peers=node_ranks(rank, num_ranks, rpn) if scoped else None,
        kv_slots=route.num_kv_slots, decode_split=bool(placements),
    )  # fmt: skip
    if plan.chunks:
        step = _with_tiles(step, home_reqs=home_reqs, guest_slots=guest_slots,
                           req_to_token=req_to_token)  # fmt: skip
    return step


def _with_tiles(step: DcpStep, *, home_reqs, guest_slots, req_to_token) -> DcpStep:
    """The step's prefill chunks as row tiles (``extend_tiles``): this rank's tile route, the KV
    spans it reads (device views) and its chunk rows by pool index and rid. O(chunks x ranks)."""
    rank, plan = step.rank, step.plan
    tiles = build_tile_route(plan.chunks, rank=rank, num_ranks=step.num_ranks)
    home, rows, rids = [], {}, {}
    for c, hc in zip((c for c in plan.chunks if c.home_rank == rank), tiles.home, strict=True):
        idx = int(home_reqs[c.rid].kv.req_pool_idx)
        home.append(_home_slots(req_to_token[idx], c.placement.shards, rank, c.end))
        rows[idx] = rids[c.rid] = (hc.first, c.start, c.num_rows)
    guests = {g.rid: _guest(guest_slots, g.rid, rank) for r in tiles.recv for g in r}
    return replace(step, tiles=tiles, tile_slots=(tuple(home), guests), extend_rows=rows,
                   extend_rids=rids, extend_capacity=max(1, tiles.max_stream))  # fmt: skip


def rank_step(rt, plan: StepPlan, *, predicted: bool, decoded: list[bool]) -> DcpStep | None:
    """Rank runtime ``rt``'s step of ``plan`` (``None``: no exchange). ``predicted``: no rank
    had news, so with the same ranks decoding (``decoded``) as at the previous header the plan
    is the previous one a token longer per home tail and its route is reused
    (``advance_step``); else it is built anew (``build_step``). O(split requests) either way."""
    prev, rt.prev_step = rt.prev_step, None
    if not plan.active:
        return None
    rt.num_steps += 1
    home_reqs = {rid: h.req for rid, h in rt.home.items()}
    req_to_token = rt.scheduler.req_to_token_pool.req_to_token
    step = None
    if predicted and prev is not None and prev.decoded == decoded:
        step = advance_step(prev, plan, home_reqs=home_reqs, req_to_token=req_to_token,
                            tag=rt.num_steps)  # fmt: skip
    if step is None:
        guest_slots = {rid: g.slots for rid, g in rt.guests.items()}
        step = build_step(plan, rank=rt.rank, num_ranks=rt.num_ranks, home_reqs=home_reqs,
                          guest_slots=guest_slots, req_to_token=req_to_token,
                          capacity=rt.capacity, tag=rt.num_steps,
                          ranks_per_node=rt.ranks_per_node)  # fmt: skip
    step = replace(step, decoded=decoded,
                   batch_rows=tuple(rt.batch_rows[k] for k in step.row_keys))  # fmt: skip
    rt.prev_step = step
    return step


def advance_step(prev: DcpStep, plan: StepPlan, *, home_reqs: dict[str, Any], req_to_token,
                 tag: int) -> DcpStep | None:  # fmt: skip
    """``prev``'s route for ``plan`` when ``plan`` is ``prev.plan`` one decode step later (the
    step header predicted it: no rank had news and the same ranks decode): the same sends,
    guest items and merge order, only the home rows' own slots grow with their tails. O(home
    split rows). ``None`` if ``prev`` cannot be reused (a prefill chunk, rounds, failed moves,
    other requests): build the step anew."""
    if prev.rounds != 1 or prev.extend_capacity or plan.chunks or plan.failed:
        return None
    if len(plan.placements) != len(prev.plan.placements):
        return None
    rank, route = prev.rank, prev.route
    mine = {p.rid: p for p in plan.placements if p.home_rank == rank}
    local = []
    for rid in route.home_rids:
        p = mine.get(rid)
        if p is None:
            return None
        row = req_to_token[home_reqs[rid].kv.req_pool_idx]
        local.append(_home_slots(row, p.shards, rank, p.shards[-1].end))
    new = replace(route, local_slots=tuple(local))
    return DcpStep(plan, rank, prev.num_ranks, new, prev.row_keys, tag, rounds=1,
                   bucket=prev.bucket, peers=prev.peers, row_rids=prev.row_rids,
                   kv_slots=new.num_kv_slots,
                   reuses_route=prev.route)  # fmt: skip


def _home_slots(row, shards, rank: int, end: int) -> Slots:
    """A home's slots of its ranges among ``shards`` below ``end``: views of its
    ``req_to_token`` ``row``, token order."""
    parts = [(s.start, min(s.end, end)) for s in shards if s.rank == rank and s.start < end]
    return Slots([row[a:b] for a, b in parts], sum(b - a for a, b in parts))


def _guest(guest_slots: dict[str, Any], rid: str, rank: int):
    g = guest_slots.get(rid)
    if g is None:
        raise RuntimeError(
            f"sglang_dcp: rank {rank} holds no guest KV of {rid!r}, which the step header "
            "places here"
        )
    return g


def check_against_batch(local_batch, split_reqs: dict[str, Any], decoding: list[str]) -> None:
    """Debug: the requests the header says decode split are exactly the batch's split requests,
    with the batch's sequence lengths (O(batch); only under ``SGLANG_DCP_POISON_MOVED=1``)."""
    in_batch = {}
    for req, n in zip(local_batch.reqs, local_batch.seq_lens_cpu.tolist()):
        if req.rid in split_reqs:
            in_batch[req.rid] = int(n)
            if kv_len(req) != int(n):
                raise RuntimeError(
                    f"sglang_dcp: {req.rid} has {kv_len(req)} KV tokens, the batch says {int(n)}"
                )
    if set(in_batch) != set(decoding):
        raise RuntimeError(
            f"sglang_dcp: header decodes {sorted(decoding)}, the batch has {sorted(in_batch)}"
        )
