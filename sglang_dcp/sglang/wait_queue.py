"""The DP controller's wait queue: requests the planner cannot place *now* wait here.

A mixin of ``dispatcher.DcpDispatcher`` (policies that split: ``dcp``, ``uniform``). Waiting
requests are kept in arrival order and retried first fit (``drain``):

- on every ``finished`` (KV freed), and when the defragmenter moved KV (``defrag.py``);
- on time (``poll``, called by the controller's event loop, ``dpc.py``): a refusal may name the
  policy-clock time at which time alone can change its answer (``Rejection.retry_at_ms``:
  ``dcp``'s ``cross_wait_ms`` and ``age_ms``). Without it a request refused for a wait, with
  nothing left to finish, would wait forever. The simulator retries at the same times
  (``sim/engine.py``).

``max_bypass`` bounds first fit, so a long request is not starved by a stream of short ones:
once the oldest waiting request has been passed over ``max_bypass`` times, nothing is admitted
ahead of it. SGLang-free.
"""

from __future__ import annotations

from typing import Any

from sglang_dcp.types import Rejection


class WaitQueue:
    """Needs ``queue``, ``bypassed``, ``max_bypass``, ``_keys``, ``_clock``, ``_tick``,
    ``_admit``, ``_placed``, ``reject`` and ``_log`` (``DcpDispatcher``'s)."""

    _retry_at_ms: float | None = None  # the earliest timed wait of a waiting request

    def _enqueue(self, req: Any, reason: str, refused: Rejection | None = None) -> None:
        self.queue[req.rid] = req
        self.bypassed[req.rid] = 0
        self._timed(refused)
        self._log("sglang_dcp: planner queue rid=%s (%s) %s", req.rid, reason, self.state())

    def _timed(self, refused: Rejection | None) -> None:
        at = refused.retry_at_ms if refused is not None else None
        if at is not None and (self._retry_at_ms is None or at < self._retry_at_ms):
            self._retry_at_ms = at

    def poll(self) -> bool:
        """Retry the queue if a waiting request's timed wait is over; returns whether it did.
        Cheap when nobody waits on time (one comparison)."""
        at = self._retry_at_ms
        if at is None or not self.queue or self._clock() * 1e3 < at:
            return False
        self.drain()
        return True

    def _starving_head(self) -> str | None:
        """The oldest waiting request, if it has been passed over ``max_bypass`` times."""
        if not self.queue or self.max_bypass is None:
            return None
        head = next(iter(self.queue))
        return head if self.bypassed[head] >= self.max_bypass else None

    def drain(self) -> None:
        """Retry the waiting requests in arrival order (first fit, bounded by ``max_bypass``)."""
        self._tick()
        self._retry_at_ms = None  # the refusals below say again when to retry
        skipped: list[str] = []  # still waiting, ahead of the ones tried next
        for rid, req in list(self.queue.items()):
            placement = self._admit(req)
            if isinstance(placement, Rejection):
                if placement.retryable:
                    self._timed(placement)
                    if self.max_bypass is not None and self.bypassed[rid] >= self.max_bypass:
                        break  # it has waited long enough: nothing behind it goes first
                    skipped.append(rid)
                    continue
                self._unqueue(rid)
                self.reject(req, placement.reason)
                continue
            self._unqueue(rid)
            for waiting in skipped:
                self.bypassed[waiting] += 1
            self._placed(req, placement)
            if self.max_bypass is not None and any(
                self.bypassed[w] >= self.max_bypass for w in skipped
            ):
                break  # one it passed has now waited long enough: nothing more goes ahead of it
        if self._retry_at_ms is not None and not self.queue:
            self._retry_at_ms = None

    def _unqueue(self, rid: str) -> Any:
        self.bypassed.pop(rid, None)
        return self.queue.pop(rid)

    def drop_queued(self, rid: str | None, abort_all: bool = False) -> list[Any]:
        """Remove waiting requests a client aborted (SGLang matches rids by prefix,
        scheduler.py:5460); returns them so the caller can answer their clients."""
        gone = [r for r in self.queue
                if abort_all or (rid is not None and str(r).startswith(rid))]  # fmt: skip
        out = [self._unqueue(r) for r in gone]
        for r in gone:
            self._keys.pop(r, None)
            self._log("sglang_dcp: planner drop rid=%s (aborted while waiting) %s", r, self.state())
        return out
