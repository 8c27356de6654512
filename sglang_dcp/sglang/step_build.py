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

from dataclasses import dataclass, field
from typing import Any

from sglang_dcp.exchange.route import RankRoute, build_rank_route, num_rounds, part_ranks
from sglang_dcp.exchange.static import Slots
from sglang_dcp.sglang.step import StepPlan


@dataclass(slots=True)
class DcpStep:
    """This rank's part of one active step: what the attention backend loads and runs.

    ``route`` home rows are this rank's split requests decoded this step (``row_keys``: their
    ``req_pool_idx``, in route order); every other batch row keeps SGLang's own attention."""

    plan: StepPlan
    rank: int
    num_ranks: int
    route: RankRoute
    row_keys: tuple[int, ...]
    tag: int
    rounds: int = 1  # exchange rounds per layer at the engine's capacity (> 1: eager)
    # set by the backend
    loaded: bool = False
    next_layer: int = 0
    done_layer: int = -1
    exchange_s: float = 0.0
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
) -> DcpStep:
    """``home_reqs[rid]``: the SGLang ``Req`` of each request homed here and decoded this step;
    ``guest_slots[rid]``: this rank's guest slot tensor of a peer's request (token order)."""
    parts = {p.rid: part_ranks(p) for p in plan.placements}
    placements = [p for p in plan.placements if len(parts[p.rid]) > 1]
    local: dict[str, Slots] = {}
    keys: list[int] = []
    rids: list[str] = []
    for p in placements:
        if p.home_rank == rank:
            req = home_reqs[p.rid]
            idx = req.kv.req_pool_idx
            row = req_to_token[idx]
            local[p.rid] = Slots([row[s.start : s.end] for s in p.shards if s.rank == rank],
                                 sum(s.end - s.start for s in p.shards if s.rank == rank))
            keys.append(int(idx))
            rids.append(p.rid)
        elif rank in parts[p.rid]:
            g = guest_slots.get(p.rid)
            if g is None:
                raise RuntimeError(
                    f"sglang_dcp: rank {rank} holds no guest KV of {p.rid!r}, which the step "
                    "header places here"
                )
            local[p.rid] = Slots([g], g.numel())
    route = build_rank_route(
        placements, rank=rank, num_ranks=num_ranks, local_slots=local, parts=parts
    )
    return DcpStep(
        plan, rank, num_ranks, route, tuple(keys), tag,
        rounds=num_rounds(placements, num_ranks, capacity, parts), row_rids=rids,
    )  # fmt: skip


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
