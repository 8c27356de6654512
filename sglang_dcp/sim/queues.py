"""The simulator's waiting queues: requests the policy cannot place yet, retried when KV frees.

Policies that place globally (``dcp``, ``uniform``) share one FIFO, ``GLOBAL``: the DP
controller's queue (``sglang/dispatcher.py``), first fit, each waiting request passed over at
most ``bypass`` times (``--dcp-queue-max-bypass``; 0: strict arrival order, None: unbounded
first fit); once its head is *starving* nothing new goes ahead of it. With ``tokens`` (not the
server's yet: issue 27 candidate, NOTES.md) a waiter starves only once it has also been passed by
requests holding ``tokens`` times its own KV (``size[i]``), so a long request lets more short ones
by than a short one does. Policies whose dispatch is
final (the SGLang baselines) bind a request to a rank; each such rank has its own FIFO and the
other ranks keep admitting, as SGLang's per-rank queues do. Pure Python.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

GLOBAL = -1  # queue key of requests not bound to a rank

# try_admit(i) -> None (admitted, finished or rejected for good) or the queue key it waits in
TryAdmit = Callable[[int], "int | None"]


class WaitQueues:
    """Request indices waiting, per queue key (``GLOBAL`` or a rank)."""

    def __init__(self, bypass: int | None, tokens: float | None = None,
                 size=None) -> None:
        self.bypass = bypass
        self.tokens, self.size = tokens, size
        self.queues: dict[int, deque[int]] = {}
        self.passed: dict[int, int] = {}  # GLOBAL waiter -> later requests admitted ahead of it
        self.passed_kv: dict[int, float] = {}  # GLOBAL waiter -> their KV (with ``tokens``)

    def __bool__(self) -> bool:
        return bool(self.queues)

    def __iter__(self) -> Iterator[int]:
        return iter(self.queues)

    def wait(self, key: int, i: int) -> None:
        """Request ``i`` waits at the back of queue ``key``."""
        self.queues.setdefault(key, deque()).append(i)
        if key == GLOBAL:
            self.passed[i] = 0
            self.passed_kv[i] = 0.0

    def overtaken(self, i: int) -> None:
        """Request ``i`` was admitted ahead of every GLOBAL waiter."""
        self._pass(i, self.queues.get(GLOBAL, ()))

    def _pass(self, i: int, waiters) -> None:
        kv = float(self.size[i]) if self.tokens is not None else 0.0
        for j in waiters:
            self.passed[j] += 1
            self.passed_kv[j] += kv

    def _over(self, j: int) -> bool:
        """Waiter ``j`` has been passed over enough: nothing more goes ahead of it."""
        if self.bypass is None or self.passed[j] < self.bypass:
            return False
        return self.tokens is None or self.passed_kv[j] >= self.tokens * float(self.size[j])

    def has_global(self) -> bool:
        return GLOBAL in self.queues

    def starving(self) -> bool:
        """The GLOBAL head has been passed over ``bypass`` times: nothing goes first."""
        q = self.queues.get(GLOBAL)
        return bool(q) and self._over(q[0])

    def drain_all(self, try_admit: TryAdmit, rejected: Callable[[int], bool], ready) -> None:
        """Retry every queue, oldest head first (``ready[i]``: when request i was ready)."""
        for key in sorted(self.queues, key=lambda k: ready[self.queues[k][0]]):
            self.drain(key, try_admit, rejected)

    def drain(self, key: int, try_admit: TryAdmit, rejected: Callable[[int], bool]) -> None:
        if key == GLOBAL:
            return self._drain_first_fit(try_admit, rejected)
        q = self.queues[key]
        while q:
            k = try_admit(q[0])
            if k is not None:
                if k != key:  # the policy now binds it elsewhere
                    self.queues.setdefault(k, deque()).append(q.popleft())
                    continue
                break
            q.popleft()
        if not q:
            del self.queues[key]

    def _drain_first_fit(self, try_admit: TryAdmit, rejected: Callable[[int], bool]) -> None:
        """Retry in arrival order; a later request that fits goes ahead of earlier ones, at
        most ``bypass`` times each."""
        q, passed = self.queues[GLOBAL], self.passed
        keep: deque[int] = deque()
        while q:
            i = q.popleft()
            k = try_admit(i)
            if k is None:  # admitted (or rejected for good)
                passed.pop(i, None)
                self.passed_kv.pop(i, None)
                if not rejected(i):
                    self._pass(i, keep)
                    if any(self._over(j) for j in keep):
                        break
                continue
            if k != GLOBAL:  # the policy now binds it to a rank
                passed.pop(i, None)
                self.passed_kv.pop(i, None)
                self.queues.setdefault(k, deque()).append(i)
                continue
            keep.append(i)
            if self._over(i):
                break
        keep.extend(q)
        if keep:
            self.queues[GLOBAL] = keep
        else:
            del self.queues[GLOBAL]
