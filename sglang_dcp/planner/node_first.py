"""``dcp``'s splits stay inside one node (``cross_wait_ms``): always by default, or while young.

With the node-scoped exchange (``exchange_wire="scoped"``, what the server ships with
``--dcp-ranks-per-node``) a step sends only to its node's peers while no split crosses nodes;
one crossing pair moves every rank to the all-rank wire for as long as that request lives.
``dcp`` prices a crossing when it chooses guests (``wire_cost.py``), but on a KV-full cluster of
several nodes the home's node often lacks the room *now*, so the cheapest plan crosses, where a
short wait would have found room inside one node: ``uniform``, whose groups are nodes and which
never crosses, beat ``dcp`` on Claude-like traffic over 16-32 Kimi-K2 ranks (issue 27: its step
ran without the all-rank rows, so requests lived shorter and the KV turned over faster).

Rule: when ``dcp``'s plan for a request has a guest on another node than its home and the request
arrived (or was first refused) less than ``cross_wait_ms`` ago, the best plan inside one node is
taken instead (``_place`` with the other nodes' ranks excluded, every node tried; the lowest
predicted step wins), and if no node can hold it the request waits (retryable). Once it has
waited ``cross_wait_ms`` it may cross; one that no node could ever hold crosses at once. The
default waits without limit (``math.inf``): a split crosses nodes only when no node could ever
hold the request. Whole placements, pinned homes, one-node clusters and the other wires are
untouched; ``cross_wait_ms=0`` turns it off. The clock is ``on_time``'s (the simulator's events;
the server's DP controller, whose queue retries a finite wait on time, ``sglang/wait_queue.py``).
Measured in ``bench/NOTES.md`` (sessions 7 and 8): one crossing pair puts the whole cluster on
the all-rank wire for that request's life, and in every multi-node regime measured waiting for
room inside a node was as good or better than crossing after 1.5 or 5 s.
"""

from __future__ import annotations

import dataclasses
import math

from sglang_dcp.types import Rejection, Request


class NodeFirst:
    """Mixin of ``dcp.DcpPolicy`` (needs ``_place``, ``_excl``, ``_predicted_step_us``,
    ``_sizes``, ``_waiting_since`` and ``_now_ms`` of ``budget.py``)."""

    cross_wait_ms: float | None = None
    _cross_at: float | None = None  # when the crossing plan the last call put off is allowed

    def _node_first_options(self, cross_wait_ms: float | None) -> None:
        if cross_wait_ms is not None and not cross_wait_ms >= 0:
            raise ValueError(f"dcp: cross_wait_ms must be >= 0 (0: off), got {cross_wait_ms}")
        rpn = self.cluster.ranks_per_node
        on = cross_wait_ms and self.exchange_wire == "scoped" and rpn < self.num_ranks
        self.cross_wait_ms = float(cross_wait_ms) if on else None
        # the most KV a request can hold inside one node (its largest max_degree ranks): one
        # larger than that never fits inside one
        self._node_kv = max(sum(sorted(self.cap[n0:n0 + rpn], reverse=True)[:self.max_degree])
                            for n0 in range(0, self.num_ranks, rpn))  # fmt: skip

    def _crosses(self, plan) -> bool:
        return not all(self.cluster.same_node(g, plan[0]) for g, _, _ in plan[1])

    def _young(self, req: Request, home_rank: int | None):
        """``(resv, since)`` if the rule may keep ``req`` inside one node now, else ``None``."""
        if self.cross_wait_ms is None or home_rank is not None:
            return None
        since = self._waiting_since.get(req.rid, self._now_ms)
        if self._now_ms - since >= self.cross_wait_ms:
            return None
        resv = self._sizes(req)[0]
        if resv > self._node_kv:
            return None  # no node could ever hold it: waiting would only delay it
        return resv, since

    def _nodes_with_room(self, resv: int) -> list[int]:
        """First ranks of the nodes whose free KV (ranks not excluded) is at least ``resv``:
        only they can hold a split of the request inside them. O(num_ranks)."""
        rpn, cap, kv, excl = self.cluster.ranks_per_node, self.cap, self.kv, self._excl
        return [n0 for n0 in range(0, self.num_ranks, rpn)
                if sum(cap[r] - kv[r] for r in range(n0, min(n0 + rpn, self.num_ranks))
                       if r not in excl) >= resv]  # fmt: skip

    def _node_first_early(self, req: Request, home_rank: int | None):
        """A retryable ``Rejection`` before any search when the rule applies and no node has
        ``resv`` free (every plan would cross); else ``None``. Keeps a waiting request's retries
        O(num_ranks): they come on every finish."""
        self._cross_at = None
        young = self._young(req, home_rank)
        if young is None or not self._sizes(req)[2] or self._nodes_with_room(young[0]):
            return None  # (a request too short to split waits for a rank as before)
        return self._wait(req, young[1])

    def _wait(self, req: Request, since: float) -> Rejection:
        at = since + self.cross_wait_ms  # then the crossing plan is allowed
        self._cross_at = at if math.isfinite(at) else None
        waited = "" if self._cross_at is None else \
            f" and has waited less than {self.cross_wait_ms:g} ms"
        return Rejection(req.rid, f"request {req.rid!r} needs a split across nodes{waited}: it "
                         "waits for room inside one node", retryable=True,
                         retry_at_ms=self._cross_at)

    def _node_first(self, req: Request, plan, home_rank: int | None):
        """``plan`` (from ``_place``), or the best plan inside one node, or a retryable
        ``Rejection`` (module docstring)."""
        self._cross_at = None
        if isinstance(plan, Rejection) or not plan[1] or not self._crosses(plan):
            return plan
        young = self._young(req, home_rank)
        if young is None:
            return plan
        resv, since = young
        n, rpn = self.num_ranks, self.cluster.ranks_per_node
        at = since + self.cross_wait_ms  # a refusal of the in-node plan may lift then (_timed)
        self._cross_at = at if math.isfinite(at) else None
        excl, best = self._excl, None
        try:
            for n0 in self._nodes_with_room(resv):  # the others cannot hold it
                self._excl = excl | frozenset(r for r in range(n) if not n0 <= r < n0 + rpn)
                got = self._place(req, None)
                if not isinstance(got, Rejection):
                    step = self._predicted_step_us(got[0], got[1], resv - got[2])
                    if best is None or step < best[0]:
                        best = (step, got)
        finally:
            self._excl = excl
        if best is not None:
            return best[1]
        return self._wait(req, since)

    def _timed(self, got):
        """``got`` (the final answer of ``_plan``); a retryable refusal (the step budget's) of
        the in-node plan taken instead of a crossing one may change once the crossing plan is
        allowed: it says when (``Rejection.retry_at_ms``)."""
        at = self._cross_at
        if at is None or not isinstance(got, Rejection) or not got.retryable:
            return got
        if got.retry_at_ms is not None:
            at = min(at, got.retry_at_ms)
        return dataclasses.replace(got, retry_at_ms=at)
