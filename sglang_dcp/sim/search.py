"""Goodput: the highest arrival rate a policy serves within the SLO.

A rate *passes* when, replaying the workload scaled to that rate,

- P99 TPOT <= ``slo_tpot_ms`` (``tpot_stat="mean"``: the token-weighted mean TPOT, total decode
  time over total decoded tokens, for deployments whose prefill stalls decode, where a short
  request caught by one stall breaks any P99), and
- P99 wait for KV (decode-ready until admitted) <= ``max_kv_wait_ms``.

The second condition is what "keeps up with the load" means: admission is bounded by KV
capacity, so past saturation the decode batch stops growing (TPOT can stay within the SLO) while
the queue grows without bound. Rejections (requests that fit nowhere) do not depend on the rate
and are reported, not searched on.

Search: start at the workload's native rate, double (or halve) until the pass/fail boundary is
bracketed, then bisect in log space until ``hi / lo - 1 <= rel_precision`` or ``max_runs`` runs
were spent. The result is the highest passing rate seen; it assumes pass/fail is monotone in the
rate (true of the model up to burst-alignment noise in the trace).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from sglang_dcp.sim.metrics import FINISHED, RunResult, pct


@dataclass(frozen=True)
class SearchSpec:
    slo_tpot_ms: float
    max_kv_wait_ms: float
    rel_precision: float = 0.02
    max_runs: int = 16
    tpot_stat: str = "p99"  # or "mean": token-weighted (module docstring)

    def __post_init__(self) -> None:
        if self.tpot_stat not in ("p99", "mean"):
            raise ValueError(f"tpot_stat must be 'p99' or 'mean', got {self.tpot_stat!r}")


@dataclass
class SearchResult:
    max_rate_rps: float  # 0.0: even the lowest rate tried failed
    precision: float  # hi/lo - 1 when bracketed; inf when no failing rate was found
    trials: list[dict] = field(default_factory=list)  # one per run, in order
    best: RunResult | None = None  # the run at max_rate_rps


def check(run: RunResult, spec: SearchSpec) -> tuple[bool, dict]:
    p99_tpot = pct(run.tpot_ms, 99)
    p99_wait = pct(run.queue_ms, 99)
    mean = {} if spec.tpot_stat == "p99" else {"mean_tpot_ms": mean_tpot_ms(run)}
    tpot = mean.get("mean_tpot_ms", p99_tpot)
    ok = not (run.aborted or tpot > spec.slo_tpot_ms or p99_wait > spec.max_kv_wait_ms)
    return ok, {"rate_rps": run.rate_rps, "p99_tpot_ms": p99_tpot, "p99_kv_wait_ms": p99_wait,
                **mean, "aborted": run.aborted, "passed": ok}


def mean_tpot_ms(run: RunResult) -> float:
    """Token-weighted mean TPOT (ms): decode time summed over requests / decoded tokens."""
    ok = (run.status == FINISHED) & (run.output_len > 1)
    toks = float((run.output_len[ok] - 1).sum())
    return float((run.finish_ms[ok] - run.first_step_ms[ok]).sum()) / toks if toks else 0.0


def abort_after(population: int) -> int:
    """Fewest values above a threshold that force the P99 (linear interpolation) above it, plus
    one of margin: a run can stop as soon as that many requests broke the SLO."""
    return population - math.floor(0.99 * (population - 1)) + 1 if population > 0 else 0


def find_max_rate(
    run_at: Callable[[float], RunResult], start_rate: float, spec: SearchSpec
) -> SearchResult:
    """Bracket and bisect ``run_at(rate)`` as described in the module docstring."""
    lo: float | None = None
    hi: float | None = None
    best: RunResult | None = None
    trials: list[dict] = []
    rate = start_rate
    for _ in range(spec.max_runs):
        run = run_at(rate)
        ok, info = check(run, spec)
        trials.append(info)
        if ok:
            lo, best = rate, run
        else:
            hi = rate
        if lo is None:
            rate = hi / 2
        elif hi is None:
            rate = lo * 2
        elif hi / lo - 1 <= spec.rel_precision:
            break
        else:
            rate = math.sqrt(lo * hi)
    if lo is None:
        return SearchResult(0.0, math.inf, trials, None)
    precision = hi / lo - 1 if hi is not None else math.inf
    return SearchResult(lo, precision, trials, best)
