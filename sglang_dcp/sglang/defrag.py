"""Sealed-shard migration, the DP controller's side (the ranks' side is ``migration.py``).

**Defragmenting.** While requests wait in the controller for KV (``DcpDispatcher.queue``), at
most every ``interval_s`` the controller asks its policy to rebalance sealed KV
(``SealedRangeRebalancer.rebalance``: from the fullest rank to the emptiest with room, at most
``max_tokens`` per call; only with a rebalance threshold, ``--dcp-rebalance-threshold``). The
policy books each move at once; the moves the ranks can carry out (ranges of requests whose KV
already spans ranks: only those run the DCP data path) go to the ranks in one ``DcpMigrate``,
the others are taken back, and the waiting requests are retried against the new books. The
homes report what really happened (``ledger.py``), and a failed or dropped move puts the range
back in the books.

**Testing only** (``SGLANG_DCP_TEST_MIGRATE=1``): after a home's first report on a split
request, the controller asks to move its first guest range to a rank that holds none of its KV
(``probe_move``), so a test can watch one migration per request while it decodes.

Pure Python: no SGLang import (``send`` is the socket).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from sglang_dcp.planner.base import Migration

logger = logging.getLogger(__name__)


def probe_move(rid: str, sealed: Sequence[Sequence[int]], home: int, num_ranks: int):
    """The testing migration of ``rid`` (``sealed``: its reported ``[rank, start, end]``
    ranges): its first range on a guest, to the lowest rank holding none of its KV; ``None``
    if it has no guest range or every rank holds some of it."""
    away = [s for s in sealed if s[0] != home]
    holders = {home, *(s[0] for s in sealed)}
    free = [r for r in range(num_ranks) if r not in holders]
    if not away or not free:
        return None
    r, a, b = away[0]
    return Migration(rid, int(r), free[0], int(a), int(b))


class Defragmenter:
    """``dispatcher``: the ``DcpDispatcher`` (its ``policy`` and ``queue``); ``send(moves)``:
    one ``DcpMigrate`` to every rank."""

    def __init__(
        self,
        dispatcher,
        send: Callable[[list[Migration]], None],
        *,
        num_ranks: int,
        max_tokens: int,
        interval_s: float = 0.5,
        testing: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatcher = dispatcher
        self._send = send
        self.num_ranks = num_ranks
        self.max_tokens = max_tokens
        self.interval_s = interval_s
        self.testing = testing
        self._clock = clock
        self._last = float("-inf")
        self._tested: set[str] = set()
        self.asked = 0  # moves sent to the ranks

    def on_wait(self) -> list[Migration]:
        """Called when the controller's queue may hold waiting requests; returns the moves
        sent (none when nobody waits, too soon, or the policy does not rebalance)."""
        d = self.dispatcher
        policy = d.policy
        if not d.queue or getattr(policy, "rebalance_threshold", None) is None:
            return []  # nobody waits, or the policy does not migrate (dcp without a threshold)
        now = self._clock()
        if now - self._last < self.interval_s:
            return []
        self._last = now
        split = {rid for rid in policy.live() if policy.is_split(rid)}  # before the moves
        moves = policy.rebalance(self.max_tokens)
        runnable = [m for m in moves if m.rid in split]
        for m in reversed(moves):
            if m not in runnable:
                policy.undo(m)
        if runnable:
            self._ask(runnable, "defragment")
            d.drain()
        return runnable

    def on_report(self, report) -> list[Migration]:
        """A home's ``DcpShardReport`` (after ``PlannerBooks.on_report``); testing only: ask
        for one migration of each split request, once."""
        if not self.testing:
            return []
        moves = []
        for rid, sealed in zip(report.rids or (), report.sealed or ()):
            if rid in self._tested:
                continue
            m = probe_move(rid, sealed, report.dcp_rank, self.num_ranks)
            if m is not None:
                self._tested.add(rid)
                moves.append(m)
        if moves:
            self._ask(moves, "test")
        return moves

    def finished(self, rids: Sequence[str] | None) -> None:
        for rid in rids or ():
            self._tested.discard(rid)

    def _ask(self, moves: list[Migration], why: str) -> None:
        self.asked += len(moves)
        logger.info("sglang_dcp: migrate (%s) %s", why, moves)
        self._send(moves)
