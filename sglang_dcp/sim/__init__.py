"""Lockstep decode-cluster simulator: replays request traces through placement policies.

- ``workload``: Mooncake JSONL traces and synthetic long-tail generators; rate scaling.
- ``cost``: thin adapter to the planner's ``CostProfile`` (the one step-time model).
- ``sessions``: multi-turn agentic sessions (closed loop, TraceLab figures).
- ``engine``: the lockstep event loop with fast-forward stepping; ``channel``: its background
  KV copies; ``deploy``: where prefill runs and how KV lands (decode, colocated, pd, pd-home);
  ``prefix_cache``: per-rank LRU prefix caches (colocated).
- ``metrics``: per-request outcomes, TPOT/latency percentiles, time-weighted imbalance.
- ``search``: goodput (max rate within the SLO) by bracketing and bisection.
- ``experiment``: search every policy, replay all at one reference rate.
- ``report``: summary.json, summary.md, PNG plots. ``__main__``: the CLI.
"""

from sglang_dcp.sim.engine import SimOptions, simulate
from sglang_dcp.sim.workload import Workload, load_trace, synthetic

__all__ = ["SimOptions", "Workload", "load_trace", "simulate", "synthetic"]
