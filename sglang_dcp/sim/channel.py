"""The decode cluster's background KV copy channel (rebalance moves, ``pd-home`` ships).

Pure Python. One FIFO channel: a copy of ``size`` tokens starts when the previous one ended (or
now) and takes ``migration_ms(size)``; until it lands, its tokens stay on (and are read on) the
source rank. ``written`` is the event loop's per-rank array of KV tokens that exist, updated in
place when a copy lands.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class CopyChannel:
    def __init__(self, written: np.ndarray, migration_ms) -> None:
        self.written = written  # [num_ranks] float64, shared with the event loop
        self.migration_ms = migration_ms  # tokens -> ms
        self.pending: deque[list] = deque()  # [done_ms, request, src, dst, tokens], FIFO
        self.inflight: dict[int, list[list]] = {}  # request -> its copies not landed yet
        self.free_at = 0.0

    def __bool__(self) -> bool:
        return bool(self.pending)

    def send(self, now: float, i: int, src: int, dst: int, size: int) -> None:
        """Queue a copy of ``size`` tokens of request ``i`` from ``src`` to ``dst``."""
        self.free_at = max(self.free_at, now) + self.migration_ms(size)
        e = [self.free_at, i, src, dst, size]
        self.pending.append(e)
        self.inflight.setdefault(i, []).append(e)

    def next_ms(self) -> float:
        return self.pending[0][0] if self.pending else np.inf

    def land_due(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            self._land(self.pending.popleft())

    def flush(self, i: int) -> None:
        """Request ``i`` finishes: its copies still in flight land before the free."""
        for e in list(self.inflight.get(i, ())):
            self._land(e)

    def _land(self, e: list) -> None:
        _, i, src, dst, size = e
        if size:
            self.written[src] -= size
            self.written[dst] += size
            e[4] = 0
            self.inflight[i].remove(e)
            if not self.inflight[i]:
                del self.inflight[i]
