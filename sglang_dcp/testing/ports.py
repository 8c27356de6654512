"""Ports for test servers: free ones below Linux's ephemeral range, SGLang's derived ports
included, and under pytest-xdist each worker its own part of the range (``_worker_slice``)."""

from __future__ import annotations

import os
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


def free_server_port(low: int = 20000, high: int = 32000) -> int:
    """A port whose SGLang-derived ports are free too, below Linux's ephemeral range
    (32768-60999) so the many client connections of a test run cannot grab them meanwhile."""
    import random

    low, high = _worker_slice(low, high)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high - 241)
        if port_range_free(port):
            return port
    raise RuntimeError(f"no free port range in [{low}, {high})")


def free_low_port(avoid: int, low: int = 20000, high: int = 32000) -> int:
    """A free port below the ephemeral range, outside ``avoid``'s SGLang-derived ports."""
    import random

    low, high = _worker_slice(low, high)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high)
        if not avoid <= port <= avoid + DERIVED_PORT_OFFSETS[-1] and port_free(port):
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")
