"""Baselines that mirror SGLang 0.5.21's ``DataParallelController`` (d = 1 always).

``round_robin``: ``round_robin_scheduler`` keeps a counter over the DP ranks and sends each new
request to ``counter % num_ranks``, advancing it by one per request.
``total_tokens``: ``DPBudget.dispatch(TOTAL_TOKENS)`` picks
``argmin_r (total_tokens[r], total_requests[r])`` (first index on ties), where a rank's
``num_total_tokens`` is its used KV tokens plus the tokens of its waiting queue and
``total_requests`` is running + waiting requests. Here the counts are exact (no stale reports).

Waiting rule (both): SGLang's dispatch is final: a request sent to a rank whose KV is full waits
in *that* rank's queue. So if the chosen rank's free KV is smaller than the request's
reservation, ``admit`` returns ``Rejection(retryable=True)`` and remembers the rank; a retry of
the same rid goes to the same rank (the counter does not move again) and the waiting tokens
count towards that rank's load for ``total_tokens``. A request larger than the chosen rank's
*total* capacity can never run there: ``retryable=False``.
``rebalance`` returns ``[]``: SGLang moves no KV between DP ranks.
"""

from __future__ import annotations

from sglang_dcp.planner.base import ClusterSpec
from sglang_dcp.planner.state import LedgerPolicy, page_up
from sglang_dcp.types import Rejection, Request


class _SingleRankBaseline(LedgerPolicy):
    def __init__(self, cluster: ClusterSpec) -> None:
        super().__init__(cluster)
        self._waiting: dict[str, tuple[int, int]] = {}  # rid -> (rank dispatched to, prompt)
        self._waiting_tokens = [0] * cluster.num_ranks
        self._waiting_reqs = [0] * cluster.num_ranks

    def _choose(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _plan(self, req: Request, home_rank: int | None):
        resv = page_up(req.prompt_len + req.max_new_tokens, self.page)
        rid = req.rid
        waited = None
        if rid in self._waiting:
            waited, prompt = self._waiting.pop(rid)
            self._waiting_tokens[waited] -= prompt
            self._waiting_reqs[waited] -= 1
        if home_rank is not None:
            r = home_rank
        elif waited is not None:
            r = waited
        else:
            r = self._choose()
        if resv > self.cap[r]:
            where = "pinned home rank" if home_rank is not None else "rank"
            return Rejection(
                rid,
                f"request needs {resv} KV tokens (prompt {req.prompt_len} + max_new "
                f"{req.max_new_tokens}, page-rounded) but {where} {r} has only {self.cap[r]} "
                f"in total (largest rank: {max(self.cap)}); {self.name} never splits a request",
                retryable=False,
            )
        free = self.cap[r] - self.kv[r]
        if resv > free:
            if home_rank is None:
                self._waiting[rid] = (r, req.prompt_len)
                self._waiting_tokens[r] += req.prompt_len
                self._waiting_reqs[r] += 1
            return Rejection(
                rid,
                f"rank {r} has {free} free KV tokens, request needs {resv}; it waits for rank "
                f"{r} (SGLang's DP dispatch is final)",
                retryable=True,
            )
        return r, [], 0

    def finish(self, rid: str) -> None:
        """Also drops a waiting (never admitted) request, e.g. an abort while queued."""
        if rid in self._waiting and rid not in self._recs:
            r, prompt = self._waiting.pop(rid)
            self._waiting_reqs[r] -= 1
            self._waiting_tokens[r] -= prompt
            return
        super().finish(rid)

    def waiting(self) -> dict[str, int]:
        """Requests rejected with ``retryable=True``: rid -> the rank they wait for."""
        return {rid: r for rid, (r, _) in self._waiting.items()}

    def waiting_rank(self, rid: str) -> int | None:
        """The rank ``rid`` waits for (SGLang's dispatch is final), or ``None``. O(1)."""
        w = self._waiting.get(rid)
        return None if w is None else w[0]


class RoundRobinPolicy(_SingleRankBaseline):
    name = "round_robin"

    def __init__(self, cluster: ClusterSpec) -> None:
        super().__init__(cluster)
        self._counter = 0

    def _choose(self) -> int:
        r = self._counter
        self._counter = (r + 1) % self.num_ranks
        return r


class TotalTokensPolicy(_SingleRankBaseline):
    name = "total_tokens"

    def _choose(self) -> int:
        used, wt, batch, wr = self.used, self._waiting_tokens, self.batch, self._waiting_reqs
        best, best_key = 0, None
        for r in range(self.num_ranks):
            key = (used[r] + wt[r], batch[r] + wr[r])
            if best_key is None or key < best_key:
                best, best_key = r, key
        return best
