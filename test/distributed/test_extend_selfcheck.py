"""The extend-mode exchange (prefill into shards) on 2-4 gloo ranks against float64."""

import math
import subprocess
import sys

import pytest

from sglang_dcp.exchange.extend_check import ExtendConfig, collect_results, reference_errors
from sglang_dcp.exchange.selfcheck import TOLERANCE


@pytest.mark.parametrize(
    "world_size, seed, capacity",
    [
        (3, 0, 0),
        (4, 2, 3),  # 3 rows per peer: every chunk runs in several rounds
    ],
)
def test_extend_selfcheck(world_size, seed, capacity):
    cfg = ExtendConfig(world_size, seed, num_layers=2, capacity=capacity, impl="torch")
    results, stats = collect_results(cfg, timeout_s=120)
    err, where = reference_errors(cfg, results)
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"
    assert stats["ships"] > 0 and stats["guest_rows"] > 0
    assert (stats["max_rounds"] > 1) == (capacity > 0)
    bad = dict(results)  # a wrong row, or a missing one, is reported where it is
    key = sorted(results)[len(results) // 2]
    bad[key] = results[key].clone()
    bad[key][1, 0, 0] += 1.0
    err, where = reference_errors(cfg, bad)
    assert err > TOLERANCE and f"request {key[0]} token {key[1]} layer 1" in where, where
    del bad[key]
    assert math.isinf(reference_errors(cfg, bad)[0])


def test_selfcheck_cli_extend_prints_error_last_and_exits_zero():
    proc = subprocess.run(
        [sys.executable, "-m", "sglang_dcp.exchange.selfcheck", "--extend",
         "--world-size", "2", "--seed", "3", "--layers", "1", "--impl", "torch"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, last = proc.stdout.strip().splitlines()[-2:]
    assert first.startswith("extend world_size=2") and "ships=" in first
    assert last.startswith("max_rel_err=") and float(last.split("=")[1]) <= TOLERANCE


def test_extend_selfcheck_triton_interpreter():
    """The same rows through the Triton kernels (interpreted on CPU)."""
    cfg = ExtendConfig(2, 2, num_requests=3, num_layers=1, impl="triton")
    results, stats = collect_results(cfg, timeout_s=240)
    err, where = reference_errors(cfg, results)
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"
    assert stats["guest_rows"] > 0
