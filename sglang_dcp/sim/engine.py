"""The lockstep decode event loop.

EP makes every decode step a barrier across the R DP ranks, so the cluster has one clock: a step
takes ``step_ms(kv)`` from the cost model (slowest rank's attention + MoE for the largest batch +
exchange for guest items + fixed overheads) and every running request emits one token per step.

Request lifecycle (prefill/decode disaggregation)::

    arrival --prefill_ms(input_len)--> ready --wait for KV (FIFO)--> admitted at a step boundary
        --(output_len - 1) decode steps--> finished           (prefill emitted token 1)

Queues: a request the policy cannot place yet (retryable rejection) waits in a FIFO and is
retried, head of line, whenever KV frees (a finish or a migration). Policies that place globally
(``dcp``, ``uniform``) share one FIFO: while it is non-empty, new arrivals queue behind it, so
nothing overtakes and nothing starves. Policies whose dispatch is final (the SGLang baselines:
a request waits for the rank it was sent to) say so through ``waiting_rank(rid)``; each
such rank gets its own FIFO and other ranks keep admitting, as SGLang's per-rank queues do
(``queues.py``).
A retryable rejection while nothing runs means the request cannot fit even in an empty cluster:
it is rejected with the planner's reason. Every request ends finished or rejected.

Rebalancing: every ``rebalance_every_ms`` the loop calls ``Policy.rebalance``. The planner
switches the placement at once; the KV copy takes ``migration_ms(tokens)`` on one FIFO channel,
and until it lands the tokens are still read on the source rank (``migration="background"``),
or the whole cluster stalls for it (``migration="stall"``).

Fast forward: between events (an arrival, a finish, a rebalance) the batch and guest items are
fixed and each rank's KV grows by its batch every step, so step k of a chunk sees
``kv = kv0 + batch * k``. The loop evaluates a chunk's step times in one vectorized call, finds
the step at which the next event lands, and jumps there. ``fast_forward=False`` runs the same
arithmetic one step at a time.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from sglang_dcp.planner.base import Policy
from sglang_dcp.sim.metrics import FINISHED, REJECTED, RunResult, Series, TimeWeighted, imbalance
from sglang_dcp.sim.options import SimOptions, StepModel
from sglang_dcp.sim.queues import GLOBAL, WaitQueues
from sglang_dcp.sim.workload import Workload
from sglang_dcp.types import Placement, Rejection, Request

MAX_CHUNK = 512  # steps evaluated per vectorized call; a chunk without an event just repeats


def _written_by_rank(p: Placement, length: int) -> list[tuple[int, int]]:
    """(rank, tokens) of a request's KV that exist at ``length`` tokens; the tail is unbounded."""
    out = []
    last = len(p.shards) - 1
    for i, s in enumerate(p.shards):
        end = length if i == last else min(s.end, length)
        if end > s.start:
            out.append((s.rank, end - s.start))
    return out


def simulate(
    workload: Workload,
    policy: Policy,
    model: StepModel,
    num_ranks: int,
    *,
    kv_capacity,
    options: SimOptions = SimOptions(),
) -> RunResult:
    """Run ``workload`` through ``policy`` on ``num_ranks`` lockstep ranks. Deterministic."""
    n = len(workload)
    inp, out_len = workload.input_len, workload.output_len
    ready = workload.arrival_ms + np.asarray(model.prefill_ms(inp), dtype=np.float64)
    order = np.argsort(ready, kind="stable")
    status = np.full(n, -1, dtype=np.int8)
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    reasons: dict[str, int] = {}
    rids = [str(i) for i in range(n)]

    written = np.zeros(num_ranks)  # KV tokens that exist, per rank
    batch = np.zeros(num_ranks)
    heap: list[tuple[int, int]] = []  # (global step at which it finishes, request index)
    waiting = WaitQueues(options.queue_max_bypass)  # GLOBAL or a rank -> FIFO (queues.py)
    t = float(ready[order[0]]) if n else 0.0
    steps = busy = decoded = nxt = bad_wait = bad_tpot = migrated = 0
    stall_ms = 0.0
    if options.migration not in ("background", "stall"):
        raise ValueError(f"migration must be 'background' or 'stall', got {options.migration!r}")
    stall_mode = options.migration == "stall"
    pending: deque[list] = deque()  # background copies: [done_ms, request, src, dst, tokens]
    inflight: dict[int, list[list]] = {}
    channel_free = 0.0
    kv_imb, batch_imb = TimeWeighted(), TimeWeighted()  # over every decode step
    kv_win, batch_win = TimeWeighted(), TimeWeighted()  # over steps before the last arrival
    window_end = float(workload.arrival_ms.max()) if n else 0.0
    batch_now = 1.0
    series = Series() if options.record else None
    cap = np.maximum(np.asarray(kv_capacity, dtype=np.float64), 1.0)
    record_dt = float(ready.max() - ready.min()) / options.record_points if n else 0.0
    last_record = -np.inf
    every = options.rebalance_every_ms
    next_rebalance = t + every if every > 0 else np.inf

    def try_admit(i: int) -> int | None:
        """Admit, finish or reject request i; or return the queue key it must wait in."""
        nonlocal bad_wait
        if out_len[i] <= 1:  # prefill emitted the only token: it never enters decode
            status[i], first[i], finish[i] = FINISHED, ready[i], ready[i]
            return None
        got = policy.admit(Request(rids[i], int(inp[i]), int(out_len[i])))
        if isinstance(got, Rejection):
            if got.retryable and heap:
                rank = policy.waiting_rank(rids[i])  # dispatch-is-final policies bind it
                return GLOBAL if rank is None else rank
            status[i] = REJECTED
            reason = got.reason if not got.retryable else f"{got.reason} (cluster empty)"
            reasons[reason] = reasons.get(reason, 0) + 1
            return None
        for r, k in _written_by_rank(got, int(inp[i])):
            written[r] += k
        first[i] = t
        if t - ready[i] > options.abort_wait_ms:
            bad_wait += 1
        heapq.heappush(heap, (steps + int(out_len[i]) - 1, i))
        return None

    def rejected(i: int) -> bool:
        return status[i] == REJECTED

    def drain_all() -> None:
        waiting.drain_all(try_admit, rejected, ready)

    def land(e: list) -> None:
        """A background copy completed: its tokens now live (and are read) on dst."""
        _, i, src, dst, size = e
        if size:
            written[src] -= size
            written[dst] += size
            e[4] = 0
            inflight[i].remove(e)
            if not inflight[i]:
                del inflight[i]

    def retire(i: int) -> None:
        nonlocal bad_tpot
        for e in list(inflight.get(i, ())):  # copies still in flight land before the free
            land(e)
        status[i] = FINISHED
        finish[i] = t
        if (t - first[i]) / (out_len[i] - 1) > options.abort_tpot_ms:
            bad_tpot += 1
        for r, k in _written_by_rank(policy.placement(rids[i]), int(inp[i] + out_len[i] - 1)):
            written[r] -= k
        policy.finish(rids[i])

    def refresh_loads() -> None:
        nonlocal batch_now
        b = policy.batch_sizes()
        batch[:] = b
        batch_now = float(imbalance(batch))
        model.set_loads(b, policy.guest_items(), policy.guest_out(), policy.guest_near(),
                        busiest_pair=policy.busiest_pair())  # fmt: skip

    aborted = False
    while nxt < n or waiting or heap:
        changed = False
        policy.on_time(t, steps)
        while pending and pending[0][0] <= t:
            land(pending.popleft())
        if t >= next_rebalance and heap:
            moves = policy.rebalance(options.rebalance_max_tokens)
            for m in moves:
                i, size = int(m.rid), m.end - m.start
                migrated += size
                if stall_mode:
                    written[m.src] -= size
                    written[m.dst] += size
                else:  # one FIFO copy channel: copies land in order
                    channel_free = max(channel_free, t) + model.migration_ms(size)
                    e = [channel_free, i, m.src, m.dst, size]
                    pending.append(e)
                    inflight.setdefault(i, []).append(e)
            if moves:
                if stall_mode:  # every rank waits at the EP barrier while KV moves
                    stall = model.migration_ms(sum(m.end - m.start for m in moves))
                    t += stall
                    stall_ms += stall
                changed = True
                drain_all()
            next_rebalance = t + every
        while nxt < n and ready[order[nxt]] <= t:
            i = int(order[nxt])
            nxt += 1
            if waiting.starving():
                waiting.wait(GLOBAL, i)
                continue
            key = try_admit(i)
            if key is not None:
                waiting.wait(key, i)
            elif status[i] != REJECTED:
                waiting.overtaken()  # admitted ahead of every waiting request
            changed = True
        if changed:
            refresh_loads()
        o = options
        if 0 < o.abort_wait_count <= bad_wait or 0 < o.abort_tpot_count <= bad_tpot:
            aborted = True
            break
        if not heap:
            assert not waiting, "requests wait while nothing runs"
            if nxt < n:
                if series is not None:  # close the busy period in the KV plot
                    series.t_ms.append(t)
                    series.kv_frac.append((written / cap).astype(np.float32))
                t = max(t, float(ready[order[nxt]]))  # idle until the next request is ready
                continue
            break

        horizon = 1 if not options.fast_forward else min(heap[0][0] - steps, MAX_CHUNK)
        kv = written[None, :] + batch[None, :] * np.arange(horizon, dtype=np.float64)[:, None]
        st = model.step_ms(kv)
        cum = np.cumsum(st)
        k = horizon
        target = min(next_rebalance, pending[0][0]) if pending else next_rebalance
        if nxt < n and not waiting.starving():  # otherwise an arrival just queues: not an event
            target = min(target, float(ready[order[nxt]]))
        if target < np.inf:
            k = min(k, int(np.searchsorted(cum, target - t, side="left")) + 1)

        kv_k = imbalance(kv[:k])
        kv_imb.add(kv_k, st[:k])
        batch_imb.add(batch_now, cum[k - 1])
        if t < window_end:  # steps that start while requests are still arriving
            w_k = np.where(t + cum[:k] - st[:k] < window_end, st[:k], 0.0)
            kv_win.add(kv_k, w_k)
            batch_win.add(batch_now, float(w_k.sum()))
        if series is not None:
            series.step_ms.append(st[:k].astype(np.float32))
            if t - last_record >= record_dt:
                series.t_ms.append(t)
                series.kv_frac.append((written / cap).astype(np.float32))
                last_record = t
        t += float(cum[k - 1])
        busy += float(cum[k - 1])
        steps += k
        written += batch * k
        decoded += int(batch.sum()) * k
        if heap[0][0] <= steps:
            while heap and heap[0][0] <= steps:
                retire(heapq.heappop(heap)[1])
            drain_all()
            refresh_loads()

    if not aborted and (np.any(np.abs(written) > 1e-6) or any(policy.guest_out())):
        raise RuntimeError(f"KV accounting drifted: {written.tolist()} tokens left at the end")
    return RunResult(
        policy=getattr(policy, "name", type(policy).__name__),
        rate_rps=workload.rate_rps,
        status=status,
        arrival_ms=workload.arrival_ms,
        ready_ms=ready,
        first_step_ms=first,
        finish_ms=finish,
        output_len=out_len,
        reject_reasons=reasons,
        num_steps=steps,
        busy_ms=busy,
        end_ms=t,
        decoded_tokens=decoded,
        kv_imbalance=kv_win.value,
        batch_imbalance=batch_win.value,
        kv_imbalance_run=kv_imb.value,
        batch_imbalance_run=batch_imb.value,
        series=series,
        aborted=aborted,
        migrated_tokens=migrated,
        migration_stall_ms=stall_ms,
    )
