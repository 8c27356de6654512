"""What one simulated run measured, and the figures the summary reports.

TPOT of a request = (finish - start of its first decode step) / (output_len - 1): the mean step
time it saw. Requests with one output token have no decode steps and no TPOT. Latency = finish -
arrival, so it holds prefill (from the profile), the wait for KV, and decode.

Imbalance of a per-rank load x at one step = max(x) / mean(x); a step with mean 0 counts as 1.0
(nothing to balance). The run's figure is the average over decode steps weighted by step time;
idle time (no request decoding) has no steps and does not count. A run without steps reports 1.0.
KV is the KV written (resident) per rank; batch is the requests homed per rank.

Headline imbalance averages over the *loaded window*: steps that start before the last request
arrives. After that the cluster drains: a handful of long requests remain on a few ranks
and max/mean measures the length of the drain, not the policy (with 3 requests on 16 ranks it is
5.3 whatever the placement). ``*_imbalance_run`` keeps the average over every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINISHED, REJECTED = 0, 1


def imbalance(loads: np.ndarray) -> np.ndarray:
    """max/mean over the last axis of ``loads`` [..., num_ranks]; 1.0 where the mean is 0."""
    loads = np.asarray(loads, dtype=np.float64)
    total = loads.sum(axis=-1)
    peak = loads.max(axis=-1) * loads.shape[-1]
    return np.where(total > 0, peak / np.where(total > 0, total, 1.0), 1.0)


@dataclass
class TimeWeighted:
    """Running time-weighted mean: ``add(values, weights)`` per chunk of steps."""

    total: float = 0.0
    weight: float = 0.0

    def add(self, values: np.ndarray | float, weights: np.ndarray | float) -> None:
        if np.ndim(values):
            self.total += float(np.dot(values, weights))
            self.weight += float(np.sum(weights))
        else:
            self.total += float(values) * float(weights)
            self.weight += float(weights)

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight > 0 else 1.0


@dataclass
class Series:
    """Time series kept only when a run records them (for plots)."""

    t_ms: list[float] = field(default_factory=list)
    kv_frac: list[np.ndarray] = field(default_factory=list)  # each [num_ranks], KV used / capacity
    step_ms: list[np.ndarray] = field(default_factory=list)  # concatenated: every step's time


@dataclass
class RunResult:
    """Per-request outcomes (arrays indexed like the workload) and run-level aggregates."""

    policy: str
    rate_rps: float
    status: np.ndarray  # [num_requests] int8: FINISHED or REJECTED
    arrival_ms: np.ndarray
    ready_ms: np.ndarray  # arrival (+ prefill where replayed or causal): when it could decode
    first_step_ms: np.ndarray  # start of its first decode step (nan: never decoded)
    finish_ms: np.ndarray  # nan when rejected
    output_len: np.ndarray
    reject_reasons: dict[str, int]
    num_steps: int
    busy_ms: float  # time spent in decode steps
    end_ms: float  # when the last request finished
    decoded_tokens: int  # sum over steps of the cluster's batch: must equal sum(output_len - 1)
    kv_imbalance: float  # time-weighted over the loaded window
    batch_imbalance: float
    kv_imbalance_run: float  # time-weighted over every decode step, drain included
    batch_imbalance_run: float
    series: Series | None = None
    migrated_tokens: int = 0  # KV tokens moved by Policy.rebalance
    migration_stall_ms: float = 0.0  # time the cluster stalled for those moves
    deploy: dict | None = None  # deploy.DeployStats.summary(): cache hits, prefill, transfers
    aborted: bool = False  # stopped early (SimOptions.abort_count): only pass/fail is meaningful
    # [num_requests] prefill not replayed as a delay (SimOptions.prefill_delay="shift"): part
    # of the latency, not of the decode cluster's arrivals; None: nothing shifted
    prefill_shift_ms: np.ndarray | None = None

    @property
    def finished(self) -> int:
        return int(np.sum(self.status == FINISHED))

    @property
    def rejected(self) -> int:
        return int(np.sum(self.status == REJECTED))

    @property
    def tpot_ms(self) -> np.ndarray:
        """TPOT of finished requests with at least one decode step."""
        ok = (self.status == FINISHED) & (self.output_len > 1)
        return (self.finish_ms[ok] - self.first_step_ms[ok]) / (self.output_len[ok] - 1)

    def _since_arrival(self, t_ms: np.ndarray) -> np.ndarray:
        """``t_ms - arrival`` of finished requests, plus the prefill not replayed as a delay."""
        ok = self.status == FINISHED
        d = t_ms[ok] - self.arrival_ms[ok]
        return d if self.prefill_shift_ms is None else d + self.prefill_shift_ms[ok]

    @property
    def latency_ms(self) -> np.ndarray:
        return self._since_arrival(self.finish_ms)

    @property
    def ttft_ms(self) -> np.ndarray:
        """Arrival to the first decode step, the prefill included (finished requests only)."""
        return self._since_arrival(self.first_step_ms)

    @property
    def queue_ms(self) -> np.ndarray:
        """Wait for KV: decode-ready until admitted (finished requests only)."""
        ok = self.status == FINISHED
        return np.maximum(self.first_step_ms[ok] - self.ready_ms[ok], 0.0)


def pct(x: np.ndarray, q: float) -> float:
    """Percentile ``q`` (0-100) with linear interpolation; nan for an empty array."""
    return float(np.percentile(x, q)) if len(x) else float("nan")


def policy_summary(run: RunResult) -> dict:
    """The per-policy figures of ``summary.json`` except ``max_rate_rps``."""
    return {
        "p50_tpot_ms": pct(run.tpot_ms, 50),
        "p99_tpot_ms": pct(run.tpot_ms, 99),
        "p99_latency_ms": pct(run.latency_ms, 99),
        "kv_imbalance": run.kv_imbalance,
        "batch_imbalance": run.batch_imbalance,
        "finished": run.finished,
        "rejected": run.rejected,
    }
