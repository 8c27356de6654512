"""Test servers' ports under pytest-xdist: each worker picks from its own part of the range."""

from sglang_dcp.testing import ports


def test_each_xdist_worker_has_its_own_port_range(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    slices = []
    for n in range(2):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        low, high = ports._worker_slice(20000, 32000)
        slices.append((low, high))
        for _ in range(20):
            port = ports.free_server_port()
            assert low <= port < high - 241
            assert low <= ports.free_low_port(avoid=port) < high
    assert slices == [(20000, 26000), (26000, 32000)]


def test_one_process_uses_the_whole_range(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert ports._worker_slice(20000, 32000) == (20000, 32000)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    assert ports._worker_slice(20000, 32000) == (20000, 32000)
