"""The lockstep decode event loop.

EP makes every decode step a barrier across the R DP ranks, so the cluster has one clock: a step
takes ``step_ms(kv)`` from the cost model (slowest rank's attention + MoE for the largest batch +
exchange for guest items + fixed overheads) and every running request emits one token per step.

Lifecycle (``deploy.py`` says where prefill runs and how KV arrives)::

    arrival --deploy.pre_ms--> ready --wait for KV--> admitted (colocated: every rank stalls
        for the uncached prefill; pd: the first step waits for the transfer) --(output_len - 1)
        decode steps--> finished (prefill emitted token 1); a session's next turn is submitted
        its think time after (closed loop, ``sessions.py``)

Prefill delay (``SimOptions.prefill_delay``): with ``"shift"`` (the default) a first turn
reaches the decode cluster at its trace time and its prefill (on the prefill cluster, which has
no queue here) is added to its latency afterwards; ``"replay"`` delays it by its prefill. On an
endless trace the two give the same decode load. On a finite one, prefills longer than the
trace's arrival span spread its requests over the prefill times instead: 1500 chat + agentic
requests at a nominal 44 req/s (34 s of arrivals) reached 24 Kimi-K2 ranks over 258 s (prefills
up to 235 s), an effective 5.8 req/s, and the pooled bound passed at 4.3x the fluid bound's rate
(``bench/NOTES.md``, issue 27). A later turn of a session is submitted after its parent and
waits for its own prefill in both: the delay is causal there.

Queues (``queues.py``): a request the policy cannot place yet waits; it is retried whenever KV
frees and at the time a refusal names (``Rejection.retry_at_ms``), as the server's queue polls
(``sglang/wait_queue.py``). Global placers (``dcp``, ``uniform``) share the DP controller's
first-fit FIFO; the SGLang baselines' dispatch is final (``waiting_rank``): a FIFO per rank, as
SGLang's. A retryable rejection while nothing runs or lands means it cannot fit even an empty
cluster: rejected with the planner's reason. Every request ends finished or rejected.

Rebalancing: every ``rebalance_every_ms`` the loop calls ``Policy.rebalance``; the copy runs on
the background channel (``channel.py``, read on the source until it lands) or stalls the
cluster (``migration="stall"``).

Fast forward: between events (an arrival, a finish, a rebalance) the batch and guest items are
fixed and each rank's KV grows by its batch every step, so step k of a chunk sees
``kv = kv0 + batch * k``. The loop evaluates a chunk's step times in one vectorized call, finds
the step at which the next event lands, and jumps there. ``fast_forward=False`` runs the same
arithmetic one step at a time.
"""

from __future__ import annotations

import heapq

import numpy as np

from sglang_dcp.planner.base import Policy
from sglang_dcp.sim.channel import CopyChannel
from sglang_dcp.sim.deploy import Deployment, written_by_rank
from sglang_dcp.sim.metrics import FINISHED, REJECTED, RunResult, imbalance
from sglang_dcp.sim.options import SimOptions, StepModel
from sglang_dcp.sim.queues import GLOBAL, WaitQueues
from sglang_dcp.sim.step_stats import StepStats
from sglang_dcp.sim.workload import Workload
from sglang_dcp.types import Rejection, Request

MAX_CHUNK = 512  # steps evaluated per vectorized call; a chunk without an event just repeats


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
    deploy = Deployment(options.deployment, policy, model, workload, pd_gbps=options.pd_gbps,
                        prefix_cache=options.prefix_cache, cache_layout=options.cache_layout)
    submit = workload.arrival_ms.copy()  # a later turn's: set when its parent finishes
    pre = deploy.pre_ms(inp)
    parent, think = workload.parent, workload.think_ms
    # first turns' prefill: a latency term ("shift") or a delay ("replay"); module docstring
    shifted = np.zeros(n) if options.prefill_delay == "replay" else (
        pre if parent is None else np.where(parent < 0, pre, 0.0))
    ready = submit + (pre - shifted)  # + own stall or transfer once admitted
    child = np.full(n, -1, dtype=np.int64)  # a session's next turn, released when i finishes
    if parent is not None:
        child[parent[parent >= 0]] = np.flatnonzero(parent >= 0)
        ready[parent >= 0] = np.inf
    arr = [(float(ready[i]), i) for i in range(n) if ready[i] < np.inf]  # released, not arrived
    heapq.heapify(arr)
    landing: list[tuple[float, int]] = []  # (first decode step, i): KV in transfer (pd)
    land_home = np.zeros(num_ranks)
    ships: dict[int, list] = {}
    status = np.full(n, -1, dtype=np.int8)
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    reasons: dict[str, int] = {}
    rids = [str(i) for i in range(n)]

    written = np.zeros(num_ranks)  # KV tokens that exist, per rank
    batch = np.zeros(num_ranks)
    heap: list[tuple[int, int]] = []  # (global step at which it finishes, request index)
    waiting = WaitQueues(options.queue_max_bypass, options.queue_bypass_tokens, inp + out_len)
    t = arr[0][0] if arr else 0.0
    steps = busy = decoded = bad_wait = bad_tpot = migrated = 0
    stall_ms, retry_ms = 0.0, np.inf  # retry_ms: the earliest timed wait (retry_at_ms)
    if options.migration not in ("background", "stall"):
        raise ValueError(f"migration must be 'background' or 'stall', got {options.migration!r}")
    stall_mode = options.migration == "stall"
    channel = CopyChannel(written, model.migration_ms)  # background copies (channel.py)
    stats = StepStats(workload.arrival_ms, kv_capacity, options.record, options.record_points)
    batch_now = 1.0
    every = options.rebalance_every_ms
    next_rebalance = t + every if every > 0 else np.inf

    def release(i: int, now: float) -> None:
        """Request i finished (or failed) at ``now``: its session's next turn is submitted."""
        c = int(child[i])
        if c < 0:
            return
        if status[i] == REJECTED:  # a session whose turn failed ends there
            status[c], why = REJECTED, "an earlier turn of its session was rejected"
            reasons[why] = reasons.get(why, 0) + 1
            return release(c, now)
        submit[c] = now + think[c]
        ready[c] = submit[c] + pre[c]
        heapq.heappush(arr, (float(ready[c]), c))

    def start(i: int) -> None:
        """Request i's KV is in place: it decodes from the next step."""
        p = policy.placement(rids[i])
        moves = ships.pop(i, ())
        for r, k in ([(p.home_rank, int(inp[i]))] if moves else written_by_rank(p, int(inp[i]))):
            written[r] += k
        for src, dst, size in moves:  # pd-home: ship the sealed ranges after landing
            channel.send(t, i, src, dst, size)
        first[i] = t
        heapq.heappush(heap, (steps + int(out_len[i]) - 1, i))

    def try_admit(i: int) -> int | None:
        """Admit, finish or reject request i; or return the queue key it must wait in."""
        nonlocal bad_wait, t, retry_ms
        if out_len[i] <= 1:  # prefill emitted the only token: it never enters decode
            status[i], first[i], finish[i] = FINISHED, ready[i], ready[i]
            release(i, ready[i])
            return None
        got, stall, land, moves = deploy.admit(i, Request(rids[i], int(inp[i]), int(out_len[i])))
        if isinstance(got, Rejection):
            if got.retryable and (heap or landing):
                if got.retry_at_ms is not None and t < got.retry_at_ms < retry_ms:
                    retry_ms = float(got.retry_at_ms)
                rank = policy.waiting_rank(rids[i])  # dispatch-is-final policies bind it
                return GLOBAL if rank is None else rank
            status[i] = REJECTED
            reason = got.reason if not got.retryable else f"{got.reason} (cluster empty)"
            reasons[reason] = reasons.get(reason, 0) + 1
            release(i, t)
            return None
        if t - ready[i] > options.abort_wait_ms:
            bad_wait += 1
        t += stall  # colocated: every rank waits at the EP barrier while the prompt prefills
        ready[i] += stall + land  # the wait for KV ends at admission, not after the transfer
        if land > 0 or moves:  # pd: its first step waits for the transfer
            ships[i] = moves
            land_home[got.home_rank] += 1
            heapq.heappush(landing, (t + land, i))
        else:
            start(i)
        return None

    def drain_all() -> None:
        nonlocal retry_ms
        retry_ms = np.inf  # the refusals below say again when to retry
        waiting.drain_all(try_admit, lambda i: status[i] == REJECTED, ready)

    def retire(i: int) -> None:
        nonlocal bad_tpot
        channel.flush(i)
        status[i] = FINISHED
        finish[i] = t
        if (t - first[i]) / (out_len[i] - 1) > options.abort_tpot_ms:
            bad_tpot += 1
        p = policy.placement(rids[i])
        for r, k in written_by_rank(p, int(inp[i] + out_len[i] - 1)):
            written[r] -= k
        policy.finish(rids[i])
        deploy.finished(i, p, int(inp[i] + out_len[i] - 1))
        release(i, t)

    def refresh_loads() -> None:
        nonlocal batch_now
        b = np.asarray(policy.batch_sizes()) - land_home  # landing KV is not decoding yet
        batch[:] = b
        batch_now = float(imbalance(batch))
        model.set_loads(b, policy.guest_items(), policy.guest_out(), policy.guest_near(),
                        busiest_pair=policy.busiest_pair(),
                        cross=policy.cross_pairs())  # fmt: skip

    aborted = False
    while arr or waiting or heap or landing:
        changed = False
        policy.on_time(t, steps)
        channel.land_due(t)
        while landing and landing[0][0] <= t:
            i = heapq.heappop(landing)[1]
            land_home[policy.placement(rids[i]).home_rank] -= 1
            start(i)
            changed = True
        if t >= next_rebalance and heap:
            moves = policy.rebalance(options.rebalance_max_tokens)
            for m in moves:
                i, size = int(m.rid), m.end - m.start
                migrated += size
                if stall_mode:
                    written[m.src] -= size
                    written[m.dst] += size
                else:  # one FIFO copy channel: copies land in order
                    channel.send(t, i, m.src, m.dst, size)
            if moves:
                if stall_mode:  # every rank waits at the EP barrier while KV moves
                    stall = model.migration_ms(sum(m.end - m.start for m in moves))
                    t += stall
                    stall_ms += stall
                changed = True
                drain_all()
            next_rebalance = t + every
        while arr and arr[0][0] <= t:
            i = heapq.heappop(arr)[1]
            if waiting.starving():
                waiting.wait(GLOBAL, i)
                continue
            key = try_admit(i)
            if key is not None:
                waiting.wait(key, i)
            elif status[i] != REJECTED:
                waiting.overtaken(i)  # admitted ahead of every waiting request
            changed = True
        if waiting and retry_ms <= t:  # a timed wait is over: retry, as the server polls
            drain_all()
            changed = True
        if changed:
            refresh_loads()
        o = options
        if 0 < o.abort_wait_count <= bad_wait or 0 < o.abort_tpot_count <= bad_tpot:
            aborted = True
            break
        if not heap:
            assert landing or not waiting, "requests wait while nothing runs"
            if arr or landing:
                stats.idle(t, written)
                nxt_t = min(arr[0][0] if arr else np.inf, landing[0][0] if landing else np.inf)
                t = max(t, nxt_t)  # idle until the next request is ready or lands
                continue
            break

        horizon = 1 if not options.fast_forward else min(heap[0][0] - steps, MAX_CHUNK)
        kv = written[None, :] + batch[None, :] * np.arange(horizon, dtype=np.float64)[:, None]
        st = model.step_ms(kv)
        cum = np.cumsum(st)
        k = horizon
        target = min(next_rebalance, channel.next_ms())
        if arr and not waiting.starving():  # otherwise an arrival just queues: not an event
            target = min(target, arr[0][0])
        target = min(target, landing[0][0] if landing else np.inf,
                     retry_ms if waiting else np.inf)  # a transfer lands, a timed wait ends
        if target < np.inf:
            k = min(k, int(np.searchsorted(cum, target - t, side="left")) + 1)

        stats.chunk(t, kv, st, cum, k, batch_now, written)
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
        arrival_ms=submit,
        ready_ms=ready,
        prefill_shift_ms=shifted,
        first_step_ms=first,
        finish_ms=finish,
        output_len=out_len,
        reject_reasons=reasons,
        num_steps=steps,
        busy_ms=busy,
        end_ms=t,
        decoded_tokens=decoded,
        **stats.figures(),
        aborted=aborted,
        migrated_tokens=migrated,
        migration_stall_ms=stall_ms,
        deploy=deploy.stats.summary(),
    )
