"""A fluid estimate of the best goodput any placement could reach: a perfectly balanced cluster.

At arrival rate ``lam`` with mean step time ``s`` (ms), Little's law gives each rank's
time-averaged load, every request spending ``(out - 1)`` steps in decode::

    batch  = lam * s * E[out - 1] / R
    kv     = lam * s * E[(in + (out - 1) / 2) * (out - 1)] / R        (written KV, mean over life)
    kv_res = lam * s * E[(in + out) * (out - 1)] / R                  (reserved KV, <= capacity)

and the step time is the profile's ``step_time_us`` with those loads on every rank and no guest
items (perfect balance without paying for any exchange). ``s`` is the fixed point of that map.
The estimate is the highest ``lam`` with ``s <= slo`` and ``kv_res <= capacity``. It is
optimistic for every policy: it ignores integer batches, bursts and the P99 (it bounds the mean
step), so no policy's measured goodput should exceed it by much.
"""

from __future__ import annotations

import numpy as np

from sglang_dcp.planner.profile import CostProfile
from sglang_dcp.sim.workload import Workload


def balanced_step_ms(profile: CostProfile, num_ranks: int, batch: float, kv: float) -> float:
    r = num_ranks
    return profile.step_time_us([kv] * r, [batch] * r, [batch] * r) * 1e-3


def _per_rank_loads(workload: Workload, num_ranks: int) -> tuple[float, float, float]:
    """Per-rank (batch, written KV, reserved KV) per unit of ``rate (1/ms) x step (ms)``."""
    dec = (workload.output_len - 1).astype(np.float64)
    return (float(dec.mean()) / num_ranks,
            float(((workload.input_len + dec / 2) * dec).mean()) / num_ranks,
            float(((workload.input_len + workload.output_len) * dec).mean()) / num_ranks)


def fluid_step_ms(workload: Workload, profile: CostProfile, num_ranks: int,
                  rate_rps: float) -> float:
    """Mean step time of a perfectly balanced cluster at ``rate_rps`` (the fixed point)."""
    per_b, per_kv, _ = _per_rank_loads(workload, num_ranks)
    lam, s = rate_rps / 1e3, 1.0
    for _ in range(200):  # monotone fixed-point iteration
        s_new = balanced_step_ms(profile, num_ranks, lam * s * per_b, lam * s * per_kv)
        if abs(s_new - s) < 1e-9 or s_new > 1e6:
            return s_new
        s = s_new
    return s


def fluid_max_rate(workload: Workload, profile: CostProfile, num_ranks: int, *, slo_ms: float,
                   kv_capacity: int) -> dict:
    """Returns ``{"rate_rps", "step_ms", "limited_by"}`` for the balanced-cluster estimate."""
    per_res = _per_rank_loads(workload, num_ranks)[2]

    def ok(rate: float) -> tuple[bool, str]:
        s = fluid_step_ms(workload, profile, num_ranks, rate)
        if not s <= slo_ms:
            return False, "step time"
        if rate / 1e3 * s * per_res > kv_capacity:
            return False, "KV capacity"
        return True, ""

    lo, hi = 0.0, 1.0
    while ok(hi)[0]:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid)[0] else (lo, mid)
    return {"rate_rps": lo, "step_ms": fluid_step_ms(workload, profile, num_ranks, lo),
            "limited_by": ok(hi)[1]}


class PooledStepModel:
    """The step time of a perfectly balanced cluster of ``num_ranks``, for a simulation that
    runs the whole cluster as ONE pooled rank (``kv_capacity = num_ranks x`` a rank's).

    The pooled rank's KV and batch are spread evenly (fractional batches allowed) and nothing
    is paid for exchange: ``step = profile.step_time_us`` with ``kv / R`` and ``batch / R`` on
    every rank. Shapes as ``sim.cost.StepModel`` with one rank.
    """

    def __init__(self, profile: CostProfile, num_ranks: int, migration_gbps: float = 40.0):
        from sglang_dcp.sim.cost import StepModel

        self._inner = StepModel(profile, 1, migration_gbps)
        self.profile, self.num_ranks = profile, num_ranks
        self._b = 0.0

    def set_loads(self, batch, guest_in, guest_out, near=None, busiest_pair: int = 0,
                  cross: bool = True) -> None:  # fmt: skip
        self._b = float(batch[0]) / self.num_ranks

    def step_ms(self, kv: np.ndarray) -> np.ndarray:
        p, b = self.profile, self._b
        per_rank = kv[:, 0] / self.num_ranks  # rank_time_us is affine in the rank's KV
        rank_us = p.rank_time_us(0.0, b, b) + p.attn_us_per_kv_token * per_rank
        return (rank_us + p.moe_us(b)) * 1e-3

    def prefill_ms(self, input_len: np.ndarray) -> np.ndarray:
        return self._inner.prefill_ms(input_len)

    def migration_ms(self, tokens: int) -> float:
        return self._inner.migration_ms(tokens)
