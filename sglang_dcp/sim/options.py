"""What the event loop (``engine.simulate``) takes besides the workload and the policy: the
step-cost model it needs (``StepModel``, implemented by ``sim.cost.StepModel``) and its
options (``SimOptions``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class StepModel(Protocol):
    """What the loop needs from the cost profile (``sglang_dcp.sim.cost.StepModel``)."""

    def set_loads(self, batch, guest_in, guest_out, near=None, busiest_pair: int = 0,
                  cross: bool = True) -> None:  # fmt: skip
        """Per-rank loads that stay fixed until the next event: [num_ranks] each; the most
        queries one home sends one rank (the server exchange's bucket) and whether some home
        sends queries to another node (its scope)."""

    def step_ms(self, kv: np.ndarray) -> np.ndarray:
        """kv: [num_steps, num_ranks] resident KV tokens. Returns [num_steps] step times."""

    def prefill_ms(self, input_len: np.ndarray) -> np.ndarray: ...

    def migration_ms(self, tokens: int) -> float: ...


PREFILL_DELAYS = ("shift", "replay")


@dataclass(frozen=True)
class SimOptions:
    fast_forward: bool = True
    rebalance_every_ms: float = 0.0  # 0: never call Policy.rebalance
    rebalance_max_tokens: int = 0
    # "background": sealed shards are copied while decoding goes on (one FIFO copy channel at
    # the model's migration bandwidth); attention reads them on src until the copy lands.
    # "stall": the whole cluster stops for the copy (pessimistic bound).
    migration: str = "background"
    record: bool = False  # keep KV-occupancy and step-time series for plots
    record_points: int = 2000  # KV samples kept over the run
    # Stop early (result.aborted) once abort_wait_count requests waited longer than
    # abort_wait_ms for KV, or abort_tpot_count saw a TPOT above abort_tpot_ms: the goodput
    # search only needs pass/fail (``search.abort_after`` gives counts that decide the P99).
    abort_wait_ms: float = float("inf")
    abort_wait_count: int = 0  # 0: never
    abort_tpot_ms: float = float("inf")
    abort_tpot_count: int = 0
    # The GLOBAL queue (policies that place globally) is the DP controller's: first fit, each
    # waiting request passed over at most this many times (``--dcp-queue-max-bypass``, default
    # 16); 0 is strict arrival order, None unbounded first fit.
    queue_max_bypass: int | None = 16
    # and, if set, also by requests holding this many times the waiter's own KV (queues.py;
    # not the server's yet, so off by default)
    queue_bypass_tokens: float | None = None
    # Where prefill runs and how KV reaches the decode ranks (``deploy.py``): "decode" (prefill
    # elsewhere, KV appears at no cost), "colocated" (prefill stalls the cluster; prefix caches),
    # "pd" (transfer into each holder), "pd-home" (transfer to the home, then ship).
    deployment: str = "decode"
    prefix_cache: bool = True  # colocated: per-rank prefix caches (prefix_cache.py)
    cache_layout: bool = False  # colocated: place a turn on its cached layout (dcp)
    pd_gbps: float | None = None  # pd: GB/s into one decode rank; None: the profile's pd_gbps_per_rank
    # A first turn's prefill on the (unlimited) prefill cluster before it reaches the decode
    # ranks (decode, pd, pd-home): "shift" (the default) takes the trace's times as the times
    # requests reach the decode cluster and adds the prefill to each one's latency; "replay"
    # delays each by its prefill. The two agree on an endless trace (a constant per-request
    # delay keeps the rate and the mix), but a finite trace replayed with delays longer than
    # its arrival span reaches the decode ranks diluted (engine.py docstring). A later turn of
    # a session always waits for its prefill: the delay is causal there.
    prefill_delay: str = "shift"

    def __post_init__(self) -> None:
        if self.prefill_delay not in PREFILL_DELAYS:
            raise ValueError(f"prefill_delay must be one of {PREFILL_DELAYS}, "
                             f"got {self.prefill_delay!r}")
