"""The simulator's waiting queues: requests the policy cannot place yet, retried when KV frees.

Policies that place globally (``dcp``, ``uniform``) share one FIFO, ``GLOBAL``: the DP
controller's queue (``sglang/dispatcher.py``), first fit, each waiting request passed over at
most ``bypass`` times (``--dcp-queue-max-bypass``; 0: strict arrival order, None: unbounded
first fit); once its head is *starving* nothing new goes ahead of it. Policies whose dispatch is
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

    def __init__(self, bypass: int | None) -> None:
        self.bypass = bypass
        self.queues: dict[int, deque[int]] = {}
        self.passed: dict[int, int] = {}  # GLOBAL waiter -> later requests admitted ahead of it

    def __bool__(self) -> bool:
        return bool(self.queues)

    def __iter__(self) -> Iterator[int]:
        return iter(self.queues)

    def wait(self, key: int, i: int) -> None:
        """Request ``i`` waits at the back of queue ``key``."""
        self.queues.setdefault(key, deque()).append(i)
        if key == GLOBAL:
            self.passed[i] = 0

    def overtaken(self) -> None:
        """A new request was admitted ahead of every GLOBAL waiter."""
        for j in self.queues.get(GLOBAL, ()):
            self.passed[j] += 1

    def has_global(self) -> bool:
        return GLOBAL in self.queues

    def starving(self) -> bool:
        """The GLOBAL head has been passed over ``bypass`` times: nothing goes first."""
        q = self.queues.get(GLOBAL)
        return bool(q) and self.bypass is not None and self.passed[q[0]] >= self.bypass

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
        q, passed, bypass = self.queues[GLOBAL], self.passed, self.bypass
        keep: deque[int] = deque()
        while q:
            i = q.popleft()
            k = try_admit(i)
            if k is None:  # admitted (or rejected for good)
                passed.pop(i, None)
                if not rejected(i):
                    for j in keep:
                        passed[j] += 1
                    if bypass is not None and any(passed[j] >= bypass for j in keep):
                        break
                continue
            if k != GLOBAL:  # the policy now binds it to a rank
                passed.pop(i, None)
                self.queues.setdefault(k, deque()).append(i)
                continue
            keep.append(i)
            if bypass is not None and passed[i] >= bypass:
                break
        keep.extend(q)
        if keep:
            self.queues[GLOBAL] = keep
        else:
            del self.queues[GLOBAL]
