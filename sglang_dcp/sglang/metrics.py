"""Prometheus metrics of one DP rank's DCP work (``--enable-metrics``), from ``rank_stats``.

Each scheduler process (one DP rank) publishes its ``RankStats`` with label ``dp_rank``:

| metric (exposed name)                               | type      | RankStats field       |
|-----------------------------------------------------|-----------|-----------------------|
| sglang_dcp:guest_kv_tokens                          | gauge     | guest_kv_tokens       |
| sglang_dcp:guest_requests                           | gauge     | guest_requests        |
| sglang_dcp:home_dcp_requests                        | gauge     | home_dcp_requests     |
| sglang_dcp:guest_items_last_step                    | gauge     | guest_items_last_step |
| sglang_dcp:exchange_ms_last_step                    | gauge     | exchange_ms_last_step |
| sglang_dcp:exchange_ms_total                        | counter   | exchange_ms_total     |
| sglang_dcp:active_steps_total                       | counter   | active_steps          |
| sglang_dcp:moved_tokens_total                       | counter   | moved_tokens          |
| sglang_dcp:moves_total{result="done"|"failed"}      | counter   | moves_done/_failed    |
| sglang_dcp:exchange_rows_total{split="yes"|"no"}    | counter   | exchange_rows_split/  |
|                                                     |           | _unsplit (no: 0 by    |
|                                                     |           | construction)         |
| sglang_dcp:exchange_eager_steps_total               | counter   | exchange_eager_steps  |
| sglang_dcp:exchange_node_steps_total                | counter   | exchange_node_steps   |
| sglang_dcp:exchange_capacity                        | gauge     | exchange_capacity     |
| sglang_dcp:guest_capacity_high_water                | gauge     | guest_capacity_high_  |
|                                                     |           | water                 |
| sglang_dcp:degree_{bucket,count,sum}                | histogram | degree_count (one     |
|                                                     |           | observation per       |
|                                                     |           | placement homed here) |

(The last-step gauges are not named ``guest_items`` / ``exchange_ms``: prometheus_client files a
counter ``exchange_ms_total`` under ``exchange_ms``, so the two names would collide.)

Multiprocess: with ``--enable-metrics`` SGLang sets ``PROMETHEUS_MULTIPROC_DIR`` before it spawns
the schedulers (utils/common.py:2658), so what a scheduler writes reaches the launcher's
``/metrics``. Gauges use ``multiprocess_mode="mostrecent"``, as SGLang's own scheduler gauges do:
each rank writes its own ``dp_rank`` series, so the value shown is that rank's, with no ``pid``
label (mode ``all``) and no sum over processes (``livesum``). Counters and the histogram are
summed over processes, i.e. per ``dp_rank`` again. Only the rank's ``attn_tp_rank == 0``
scheduler publishes (SGLang's ``is_stats_logging_rank``), so nothing is counted twice.

When: AFTER ``Scheduler.get_next_batch_to_run`` (managers/scheduler.py:3641), which every rank
runs once per loop iteration: while any rank works (a rank with nothing of its own runs an IDLE
batch in lockstep) and when all are idle (the idle loop polls without pause, or once a second
with ``--sleep-on-idle``, scheduler_components/idle_sleeper.py:37). SGLang's
``SchedulerMetricsCollector.log_stats`` is too sparse for this: every 40th decode batch and only
on a rank with a decode batch of its own (a pure guest rank has none), else every 30 s when idle
(scheduler_components/metrics_reporter.py:853/1099/1439). Only changed values are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sglang_dcp.sglang.context import stats
from sglang_dcp.sglang.rank_stats import RankStats

PREFIX = "sglang_dcp:"
GAUGES = (
    "guest_kv_tokens", "guest_requests", "home_dcp_requests",
    "guest_items_last_step", "exchange_ms_last_step", "exchange_capacity",
    "guest_capacity_high_water",
)  # fmt: skip
# counter name (without "_total") -> RankStats field
COUNTERS = {"exchange_ms": "exchange_ms_total", "active_steps": "active_steps",
            "moved_tokens": "moved_tokens", "exchange_eager_steps": "exchange_eager_steps",
            "exchange_node_steps": "exchange_node_steps"}  # fmt: skip
MOVES = {"done": "moves_done", "failed": "moves_failed"}
ROWS = {"yes": "exchange_rows_split", "no": "exchange_rows_unsplit"}
DEGREE_BUCKETS = (1, 2, 3, 4, 6, 8, 16, 32, 64)


@dataclass
class Update:
    """What to write to Prometheus to go from the last published stats to the current ones."""

    gauges: dict[str, float] = field(default_factory=dict)  # name -> new value
    counters: dict[str, float] = field(default_factory=dict)  # name -> increment
    moves: dict[str, int] = field(default_factory=dict)  # result -> increment
    rows: dict[str, int] = field(default_factory=dict)  # split label -> increment
    degrees: dict[int, int] = field(default_factory=dict)  # degree -> new observations

    def __bool__(self) -> bool:
        return bool(self.gauges or self.counters or self.moves or self.rows or self.degrees)


def diff(last: RankStats | None, now: RankStats) -> Update:
    """Pure: the ``Update`` from ``last`` (None: nothing published yet) to ``now``."""
    u = Update()
    for name in GAUGES:
        v = getattr(now, name)
        if last is None or getattr(last, name) != v:
            u.gauges[name] = v
    for name, f in COUNTERS.items():
        inc = getattr(now, f) - (getattr(last, f) if last else 0)
        if inc > 0:
            u.counters[name] = inc
    for result, f in MOVES.items():
        inc = getattr(now, f) - (getattr(last, f) if last else 0)
        if inc > 0:
            u.moves[result] = inc
    for label, f in ROWS.items():
        inc = getattr(now, f) - (getattr(last, f) if last else 0)
        if inc > 0:
            u.rows[label] = inc
    before = last.degree_count if last else {}
    for d, n in now.degree_count.items():
        if n > before.get(d, 0):
            u.degrees[d] = n - before.get(d, 0)
    return u


class DcpMetrics:
    """This rank's Prometheus children. ``registry``: prometheus_client's default unless given
    (tests); in multiprocess mode values go to ``PROMETHEUS_MULTIPROC_DIR`` either way."""

    def __init__(self, dp_rank: int, registry=None) -> None:
        # Imported here: prometheus_client picks its multiprocess value class at import.
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        reg = REGISTRY if registry is None else registry
        label = {"dp_rank": str(dp_rank)}
        docs = {
            "guest_kv_tokens": "KV tokens held on this rank for requests homed elsewhere.",
            "guest_requests": "Requests homed elsewhere with a KV shard on this rank.",
            "home_dcp_requests": "Running requests homed here whose KV spans more than one rank.",
            "guest_items_last_step": "Guest attention items served in the last active DCP step.",
            "exchange_ms_last_step": "Exchange wall time of the last active DCP step (all layers).",
            "exchange_capacity": "Guest items per peer per round the static exchange holds.",
            "guest_capacity_high_water": "Most queries this rank sent one peer in one step.",
        }
        self.gauges = {
            n: Gauge(PREFIX + n, docs[n], ["dp_rank"], registry=reg,
                     multiprocess_mode="mostrecent").labels(**label)
            for n in GAUGES
        }  # fmt: skip
        self.counters = {
            "exchange_ms": Counter(PREFIX + "exchange_ms", "Exchange wall time (ms), all steps.",
                                   ["dp_rank"], registry=reg).labels(**label),
            "active_steps": Counter(PREFIX + "active_steps", "Steps this rank joined an exchange.",
                                    ["dp_rank"], registry=reg).labels(**label),
            "moved_tokens": Counter(PREFIX + "moved_tokens", "Tokens received as guest shards.",
                                    ["dp_rank"], registry=reg).labels(**label),
            "exchange_eager_steps": Counter(
                PREFIX + "exchange_eager_steps", "DCP steps run eagerly in rounds (capacity).",
                ["dp_rank"], registry=reg).labels(**label),
            "exchange_node_steps": Counter(
                PREFIX + "exchange_node_steps",
                "DCP steps whose exchange ran within this rank's node only (node scope).",
                ["dp_rank"], registry=reg).labels(**label),
        }  # fmt: skip
        rows = Counter(PREFIX + "exchange_rows", "Decode rows that went through the exchange.",
                       ["dp_rank", "split"], registry=reg)  # fmt: skip
        self.rows = {r: rows.labels(split=r, **label) for r in ROWS}
        moves = Counter(PREFIX + "moves", "KV shard moves this rank took part in.",
                        ["dp_rank", "result"], registry=reg)  # fmt: skip
        self.moves = {r: moves.labels(result=r, **label) for r in MOVES}
        self.degree = Histogram(
            PREFIX + "degree", "CP degree of the requests homed on this rank (one per placement).",
            ["dp_rank"], buckets=DEGREE_BUCKETS, registry=reg,
        ).labels(**label)  # fmt: skip
        self._last: RankStats | None = None

    def publish(self, now: RankStats) -> Update:
        if now == self._last:  # the common case, every scheduler iteration: one comparison
            return Update()
        u = diff(self._last, now)
        if u:
            for n, v in u.gauges.items():
                self.gauges[n].set(v)
            for n, inc in u.counters.items():
                self.counters[n].inc(inc)
            for r, inc in u.moves.items():
                self.moves[r].inc(inc)
            for r, inc in u.rows.items():
                self.rows[r].inc(inc)
            for d, n in u.degrees.items():
                for _ in range(n):
                    self.degree.observe(d)
            self._last = replace(now, degree_count=dict(now.degree_count))
        return u




def _dp_rank() -> int:
    from sglang.srt.runtime_context import get_parallel

    return get_parallel().dp_rank or 0


def for_scheduler(scheduler) -> DcpMetrics | None:
    """This process's metrics, made on first use: only with ``--enable-metrics``, only on the
    ``attn_tp_rank == 0`` scheduler of the rank."""
    from sglang_dcp.sglang.context import OFF, ctx

    c = ctx()
    if c.metrics is None:
        reporter = getattr(scheduler, "metrics_reporter", None)
        on = reporter is not None and reporter.enable_metrics and reporter.is_stats_logging_rank
        c.metrics = DcpMetrics(_dp_rank()) if on else OFF
    return None if c.metrics is OFF else c.metrics


def after_get_next_batch_to_run(result, self, *args, **kwargs):
    m = for_scheduler(self)
    if m is not None:
        m.publish(stats())
    return result
