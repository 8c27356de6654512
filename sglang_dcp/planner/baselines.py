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

``total_tokens_sglang``: the same rule on the loads SGLang 0.5.21's DP controller really sees.
Each scheduler publishes a load snapshot (used KV tokens + queued tokens, running + waiting
requests) every ``load_snapshot_publish_interval`` = 15 decode iterations
(``arg_groups/fields/observability.py``); ``DPBudget.update_budget`` reads them (throttled to
20 ms) and overwrites its counters; between reads ``DPBudget.dispatch`` adds the dispatched
request's prompt tokens and one request to the chosen rank (``data_parallel_controller.py``).
So a burst between two snapshots is spread only by those speculative increments, and a rank
whose requests finished still looks busy until its next snapshot (SGLang PRs #21699, #25235).
Here a snapshot is taken at the first ``on_time`` call after every ``publish_every_steps``-th
decode step (the simulator calls it at every event) and speculative increments are dropped
then.
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


class TotalTokensSnapshotPolicy(TotalTokensPolicy):
    name = "total_tokens_sglang"

    def __init__(self, cluster: ClusterSpec, publish_every_steps: int = 15) -> None:
        super().__init__(cluster)
        if publish_every_steps < 1:
            raise ValueError(
                f"total_tokens_sglang: publish_every_steps must be >= 1, got {publish_every_steps}"
            )
        self.publish_every_steps = int(publish_every_steps)
        self._period = -1
        n = cluster.num_ranks
        self._snap_tokens = [0] * n  # last published used + queued tokens, plus increments
        self._snap_reqs = [0] * n

    def on_time(self, now_ms: float, step: int) -> None:
        period = step // self.publish_every_steps
        if period != self._period:
            self._period = period
            self._snap_tokens = [u + w for u, w in zip(self.used, self._waiting_tokens)]
            self._snap_reqs = [b + w for b, w in zip(self.batch, self._waiting_reqs)]

    def _plan(self, req: Request, home_rank: int | None):
        fresh = req.rid not in self._waiting and home_rank is None
        got = super()._plan(req, home_rank)
        if fresh:  # DPBudget.dispatch: speculative increment on the rank it chose
            r = got[0] if not isinstance(got, Rejection) else self._waiting.get(req.rid, (None,))[0]
            if r is not None:
                self._snap_tokens[r] += req.prompt_len
                self._snap_reqs[r] += 1
        return got

    def _choose(self) -> int:
        t, q = self._snap_tokens, self._snap_reqs
        return min(range(self.num_ranks), key=lambda r: (t[r], q[r], r))
