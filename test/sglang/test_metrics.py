"""Prometheus metrics of a rank's DCP work (metrics.py): what changes are written, the exposed
names and labels, SGLang's multiprocess mode, and the scheduler hook."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sglang_dcp.sglang import context, metrics, rank_stats
from sglang_dcp.sglang.rank_stats import RankStats


def busy() -> RankStats:
    s = RankStats(dp_rank=0, guest_kv_tokens=512, guest_requests=2, home_dcp_requests=1,
                  guest_items_last_step=3, exchange_ms_last_step=0.5, active_steps=4,
                  exchange_ms_total=2.0, moves_done=2, moves_failed=1,
                  moved_tokens=256, exchange_rows_split=7, exchange_eager_steps=1,
                  exchange_node_steps=2,
                  exchange_capacity=16, guest_capacity_high_water=3)  # fmt: skip
    s.count_degree(2)
    s.count_degree(2)
    s.count_degree(1)
    return s


def test_first_publish_writes_everything():
    u = metrics.diff(None, RankStats())
    assert u.gauges == dict.fromkeys(metrics.GAUGES, 0) and not (u.counters or u.moves or u.degrees)


def test_diff_writes_only_what_changed():
    s = busy()
    u = metrics.diff(RankStats(), s)
    assert u.gauges == {g: getattr(s, g) for g in metrics.GAUGES}
    assert u.counters == {"exchange_ms": 2.0, "active_steps": 4, "moved_tokens": 256,
                          "exchange_eager_steps": 1, "exchange_node_steps": 2}  # fmt: skip
    assert u.moves == {"done": 2, "failed": 1} and u.degrees == {2: 2, 1: 1}
    assert u.rows == {"yes": 7}  # split="no" never counts: unsplit rows keep SGLang's path
    assert not metrics.diff(s, replace(s, degree_count=dict(s.degree_count)))
    later = replace(s, guest_kv_tokens=0, active_steps=5, degree_count={2: 2, 1: 1, 4: 1})
    u = metrics.diff(s, later)
    assert u.gauges == {"guest_kv_tokens": 0} and u.counters == {"active_steps": 1}
    assert u.degrees == {4: 1} and not u.moves


def sample(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            got = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if got == want:
                return float(value)
    raise AssertionError(f"no {name}{{{want}}} in\n{text}")


def test_exposed_names_labels_and_values():
    reg = CollectorRegistry()
    m = metrics.DcpMetrics(1, registry=reg)
    m.publish(busy())
    m.publish(replace(busy(), guest_kv_tokens=0, active_steps=6))  # requests done, 2 more steps
    text = generate_latest(reg).decode()
    assert sample(text, "sglang_dcp:guest_kv_tokens", dp_rank=1) == 0
    assert sample(text, "sglang_dcp:guest_items_last_step", dp_rank=1) == 3
    assert sample(text, "sglang_dcp:exchange_ms_last_step", dp_rank=1) == 0.5
    assert sample(text, "sglang_dcp:active_steps_total", dp_rank=1) == 6
    assert sample(text, "sglang_dcp:exchange_ms_total", dp_rank=1) == 2.0
    assert sample(text, "sglang_dcp:moves_total", dp_rank=1, result="failed") == 1
    assert sample(text, "sglang_dcp:degree_count", dp_rank=1) == 3
    assert sample(text, "sglang_dcp:degree_bucket", dp_rank=1, le="1.0") == 1
    assert sample(text, "sglang_dcp:degree_sum", dp_rank=1) == 5
    assert sample(text, "sglang_dcp:exchange_rows_total", dp_rank=1, split="yes") == 7
    assert sample(text, "sglang_dcp:exchange_rows_total", dp_rank=1, split="no") == 0
    assert sample(text, "sglang_dcp:exchange_eager_steps_total", dp_rank=1) == 1
    assert sample(text, "sglang_dcp:exchange_node_steps_total", dp_rank=1) == 2
    assert sample(text, "sglang_dcp:exchange_capacity", dp_rank=1) == 16
    assert sample(text, "sglang_dcp:guest_capacity_high_water", dp_rank=1) == 3


# Two scheduler processes (DP ranks 0 and 1) write into one PROMETHEUS_MULTIPROC_DIR as SGLang's
# do; the reader collects as the launcher's /metrics does (MultiProcessCollector).
_RANK = """
from sglang_dcp.sglang import metrics
from sglang_dcp.sglang.rank_stats import RankStats
m = metrics.DcpMetrics({rank})
m.publish(RankStats(guest_kv_tokens={kv}, active_steps=3))
m.publish(RankStats(guest_kv_tokens={kv} // 2, active_steps=5))
"""
_READ = """
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
reg = CollectorRegistry()
multiprocess.MultiProcessCollector(reg)
print(generate_latest(reg).decode())
"""


def test_per_rank_values_in_sglangs_multiprocess_mode(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def py(code):
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    py(_RANK.format(rank=0, kv=100))
    py(_RANK.format(rank=1, kv=300))
    text = py(_READ)
    assert sample(text, "sglang_dcp:guest_kv_tokens", dp_rank=0) == 50
    assert sample(text, "sglang_dcp:guest_kv_tokens", dp_rank=1) == 150
    assert sample(text, "sglang_dcp:active_steps_total", dp_rank=1) == 5
    assert "pid=" not in text


def scheduler(enable_metrics=True, stats_rank=True):
    from sglang.srt.managers.scheduler import Scheduler

    s = object.__new__(Scheduler)
    s.metrics_reporter = SimpleNamespace(
        enable_metrics=enable_metrics, is_stats_logging_rank=stats_rank
    )
    return s


def test_the_hook_publishes_this_ranks_stats(monkeypatch):
    reg = CollectorRegistry()
    real = metrics.DcpMetrics
    monkeypatch.setattr(context, "_CTX", context.RankContext(stats=RankStats(guest_kv_tokens=64)))
    monkeypatch.setattr(metrics, "_dp_rank", lambda: 1)
    monkeypatch.setattr(metrics, "DcpMetrics", lambda rank: real(rank, registry=reg))
    plan = object()
    assert metrics.after_get_next_batch_to_run(plan, scheduler(), None, None) is plan
    assert sample(generate_latest(reg).decode(), "sglang_dcp:guest_kv_tokens", dp_rank=1) == 64
    context.stats().guest_kv_tokens = 0  # the data path frees the guests; next iteration:
    metrics.after_get_next_batch_to_run(plan, scheduler(), None, None)
    assert sample(generate_latest(reg).decode(), "sglang_dcp:guest_kv_tokens", dp_rank=1) == 0


@pytest.mark.parametrize("enable_metrics,stats_rank", [(False, True), (True, False)])
def test_no_metrics_without_enable_metrics_or_off_the_stats_rank(
    monkeypatch, enable_metrics, stats_rank
):
    monkeypatch.setattr(context, "_CTX", context.RankContext())
    monkeypatch.setattr(metrics, "DcpMetrics", lambda rank: pytest.fail("made metrics"))
    s = scheduler(enable_metrics, stats_rank)
    assert metrics.after_get_next_batch_to_run("plan", s, None, None) == "plan"
    assert metrics.for_scheduler(s) is None
