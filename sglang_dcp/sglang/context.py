"""One scheduler process's DCP state in one object (one scheduler process is one DP rank).

SGLang calls our hooks as plain functions with its own arguments, so the rank's state must be
reachable from them: it lives here, in one ``RankContext`` per process, instead of one module
global per part. Pure Python (no SGLang import); the parts are filled as SGLang builds them:

- ``stats`` (``rank_stats.RankStats``): what the rank reports, from the start;
- ``runtime`` (``datapath.RankRuntime``): placements, guest table, header, ledger; set once, when
  the scheduler has its pools (``Scheduler.init_request_dispatcher``);
- ``backend`` (``backend.DcpAttnBackend``): the attention wrapper and its static exchange; set
  when SGLang builds the model runner's attention backend (the latest build serves);
- ``move_staging`` (``exchange.move_staging.MoveStaging``): the shard-move staging buffers,
  reserved when SGLang sizes its KV pool (``move_reserve.py``);
- ``metrics`` (``metrics.DcpMetrics``): decided on first use (``None``: not yet; ``OFF``: this
  process does not publish).

Tests swap the whole context with ``use(RankContext(...))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sglang_dcp.sglang.rank_stats import RankStats

OFF = object()


@dataclass
class RankContext:
    stats: RankStats = field(default_factory=RankStats)
    runtime: Any = None
    backend: Any = None
    metrics: Any = None
    move_staging: Any = None  # exchange.move_staging.MoveStaging, reserved at start

    def set_runtime(self, runtime) -> None:
        if self.runtime is not None:
            raise RuntimeError(
                "sglang_dcp: this process already has a DCP rank runtime (one scheduler process "
                "is one DP rank)"
            )
        self.runtime = runtime


_CTX = RankContext()


def ctx() -> RankContext:
    """This process's context."""
    return _CTX


def stats() -> RankStats:
    """This process's stats (``rank_stats.RankStats``)."""
    return _CTX.stats


def runtime():
    """This process's rank runtime (``datapath.RankRuntime``; ``None`` before the scheduler has
    its pools, and in processes that are not schedulers)."""
    return _CTX.runtime


def current_step():
    """The step the next forward belongs to (``step_build.DcpStep``; ``None``: no exchange).

    A process-wide slot, not a ``ForwardBatch`` field: SGLang's runners rebuild the
    ``ForwardBatch`` from static buffers before the model runs (``eager_runner.load_batch``,
    the CUDA-graph runners), dropping extra attributes. Planning (the header) and launching a
    forward alternate on the scheduler thread, with overlap scheduling on or off: the header of
    step N+1 runs after step N's forward was launched (its host side, which reads this slot,
    has returned), so the slot always holds the step being launched.
    """
    rt = _CTX.runtime
    return None if rt is None else rt.step


def step_comm():
    """The exchange's communicator: SGLang's TP group (``--tp-size == --dp-size``: its rank is
    the DP rank), whose ``all_to_all_single`` goes through pynccl on GPU (capturable in a CUDA
    graph) and the gloo device group on CPU."""
    return _CTX.runtime.exchange_comm


def use(new: RankContext) -> RankContext:
    """Replace this process's context (tests); returns the old one."""
    global _CTX
    old, _CTX = _CTX, new
    return old
