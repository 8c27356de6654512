"""Ports for test servers: free ones below Linux's ephemeral range, SGLang's derived ports
included, and under pytest-xdist each worker its own part of the range (``_worker_slice``)."""

from __future__ import annotations

import os
import random
import socket

# the demo router's picks (shipped code): SGLang's derived ports and the free-port checks
from sglang_dcp.router.demo import DERIVED_PORT_OFFSETS, port_free, port_range_free


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """Under pytest-xdist (``make test``: 2 workers), worker ``gwN``'s own part of ``[low,
    high)``: a port is checked free minutes before the server binds it, so two workers picking
    from one range could both take it."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get(
        "PYTEST_XDIST_WORKER_COUNT", "1")
    if not worker.startswith("gw") or not count.isdigit() or int(count) < 2:
        return low, high
    n, w = int(worker[2:]), int(count)
    step = (high - low) // w
    return low + n * step, low + (n + 1) * step


def _pick(low: int, high: int, free, what: str, span: int = 1) -> int:
    """A random port that ``free(port)`` accepts, drawn from ``[low, high - span + 1)`` of this
    worker's part of ``[low, high)`` (``span``: the ports from it that must stay in the part)."""
    low, high = _worker_slice(low, high)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high - span + 1)
        if free(port):
            return port
    raise RuntimeError(f"no free {what} in [{low}, {high})")


def free_server_port(low: int = 20000, high: int = 32000) -> int:
    """A port whose SGLang-derived ports are free too, below Linux's ephemeral range
    (32768-60999) so the many client connections of a test run cannot grab them meanwhile."""
    return _pick(low, high, port_range_free, "port range", span=DERIVED_PORT_OFFSETS[-1] + 2)


def free_low_port(avoid: int, low: int = 20000, high: int = 32000) -> int:
    """A free port below the ephemeral range, outside ``avoid``'s SGLang-derived ports."""
    last = avoid + DERIVED_PORT_OFFSETS[-1]
    return _pick(low, high, lambda p: not avoid <= p <= last and port_free(p), "port")
