"""Sealed-shard migration while a request decodes, the rank side (the controller side is
``defrag.py``).

The DP controller asks for moves with ``DcpMigrate``, a control message every rank receives in
the same scheduler iteration. The home of each request keeps its moves (``Migrations.ask``) and,
at the request's next decode step after its first-decode shipping, puts at most
``MAX_PER_STEP`` of them in its step-header news (``take``); the other ranks ignore them. Every
rank then runs them with the step's other moves (``shipping.ship`` -> ``transfer_shards``:
the receiver allocates, bytes move, the receiver checks a checksum that weighs each token by its
position in the range, so a copy in the wrong slot order fails; only then does the source free
its slots). The switch happens at that step boundary, in the header, before the step's route is
built: the home's layout (``HomeEntry.layout``) and every guest table change together. A failed
move leaves the source as it was (``transfer_shards``) and ``plan_step`` keeps the range there.
The home reports the resulting layout to the controller (``ledger.RankLedger.shipped``).

A move is taken only if every token of its range is on its source now and written (before the
newest token, which this step writes at home); a stale one (the request finished, or the range
moved meanwhile) is dropped with a log line, and the home reports the layout as it is, so the
controller's books follow. Pure Python: no SGLang import.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sglang_dcp.planner.base import Migration

logger = logging.getLogger(__name__)

MAX_PER_STEP = 1  # migrations one home starts per step (each adds a transfer to the header)


def valid(m: Migration, layout: Sequence[tuple[int, int, int]], kv_len: int, num_ranks: int) -> str:
    """Why ``m`` cannot run on ``layout`` ((rank, start, end) tiling the request's KV) with
    ``kv_len`` tokens after this step; ``""``: it can."""
    if not (0 <= m.dst < num_ranks) or m.dst == m.src or m.end <= m.start:
        return f"bad move {m}"
    if m.end > kv_len - 1:
        return f"[{m.start}, {m.end}) reaches the tail (KV written up to {kv_len - 1})"
    for r, a, b in layout:
        if a < m.end and m.start < b and r != m.src:
            return f"tokens [{max(a, m.start)}, {min(b, m.end)}) are on rank {r}, not {m.src}"
    return ""


class Migrations:
    """One rank's queue of the controller's migration requests for the requests it homes."""

    def __init__(self, rank: int, num_ranks: int) -> None:
        self.rank, self.num_ranks = rank, num_ranks
        self.pending: dict[str, list[Migration]] = {}
        self.dropped = 0

    def ask(self, moves: Sequence[Migration], homed_here) -> None:
        """``DcpMigrate``'s moves; keep those of requests ``homed_here(rid)``."""
        for m in moves:
            if homed_here(m.rid):
                self.pending.setdefault(m.rid, []).append(m)

    def forget(self, rid: str) -> None:
        """``rid`` released its KV: its pending moves are void."""
        self.dropped += len(self.pending.pop(rid, ()))

    def take(
        self, rid: str, layout: Sequence[tuple[int, int, int]], kv_len: int, budget: int
    ) -> list[Migration]:
        """Up to ``budget`` of ``rid``'s pending moves that can run now (in the order asked;
        each checked against the layout the previous ones leave), the stale ones dropped."""
        from sglang_dcp.sglang.layout import reassign

        queue = self.pending.get(rid)
        out: list[Migration] = []
        while queue and len(out) < budget:
            m = queue.pop(0)
            why = valid(m, layout, kv_len, self.num_ranks)
            if why:
                self.dropped += 1
                logger.warning("sglang_dcp: migration %s dropped: %s", m, why)
                continue
            layout = reassign(layout, m.start, m.end, m.dst)
            out.append(m)
        if not queue:
            self.pending.pop(rid, None)
        return out


def move_fault_hook(
    moves: Sequence[Migration], p: float, fail_prefix: str, homes, rid_rule=None
):
    """The ``transfer_shards`` fault hook of this step: ``SGLANG_DCP_INJECT_MOVE_FAILURE=p``
    and ``SGLANG_DCP_INJECT_MOVE_FAILURE_RID`` (``rid_rule``, ``exchange.faults``) and,
    testing only, ``SGLANG_DCP_TEST_MIGRATE_FAIL=fail_prefix``:
    moves of matching requests whose source is not their home (``homes``: rid -> home rank,
    the same on every rank) fail in the send phase. ``None``: nothing injected."""
    from sglang_dcp.exchange.faults import move_faults
    from sglang_dcp.exchange.transfer import Phase

    base = move_faults(moves, p, rid_rule)
    mid_copy = [
        bool(fail_prefix) and m.rid.startswith(fail_prefix) and m.src != homes.get(m.rid)
        for m in moves
    ]
    if base is None and not any(mid_copy):
        return None
    return lambda phase, i: (base is not None and base(phase, i)) or (
        mid_copy[i] and phase is Phase.SEND
    )
