"""Pytest fixtures for end-to-end tests against a real server.

Enable with ``pytest_plugins = ["sglang_dcp.testing.pytest_plugin"]`` in a conftest.

- ``tiny_model_path``: the tiny Qwen3-MoE checkpoint, built once per session;
  ``tiny_deepseek_path``: the tiny DeepSeek-V3 (MLA) one.
- ``launch_server``: a factory ``launch_server(args, **kw) -> ServerProcess``; every server it
  started is stopped at the end of the fixture's scope (module), and a test fails if a server
  left processes behind. Safe to call from several threads (start servers in parallel).
- ``launch_session_server``: the same factory, its servers stopped at the end of the session:
  one server that several modules share (each module saves a start: ~1 minute on CPU).
- ``launch_router``: the same for ``RouterProcess`` (``launch_router(worker_urls, **kw)``).

When a test fails, each live server's and router's log tail is attached to the report.
"""

from __future__ import annotations

import itertools
import os

import pytest

from sglang_dcp.testing.server import RouterProcess, ServerProcess

_LIVE: list[ServerProcess] = []


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    from sglang_dcp.tiny_model import build

    return build(str(tmp_path_factory.mktemp("models") / "tiny-qwen3-moe"), seed=0)


@pytest.fixture(scope="session")
def tiny_deepseek_path(tmp_path_factory) -> str:
    from sglang_dcp.tiny_deepseek import build

    return build(str(tmp_path_factory.mktemp("models") / "tiny-deepseek-v3"), seed=0)


@pytest.fixture(scope="module")
def launch_server(tmp_path_factory):
    with _launcher(tmp_path_factory, "server", ServerProcess) as launch:
        yield launch


@pytest.fixture(scope="session")
def launch_session_server(tmp_path_factory):
    with _launcher(tmp_path_factory, "session-server", ServerProcess) as launch:
        yield launch


@pytest.fixture(scope="module")
def launch_router(tmp_path_factory):
    with _launcher(tmp_path_factory, "router", RouterProcess) as launch:
        yield launch


class _launcher:
    """Start processes of ``cls`` on demand; stop them all on exit, failing on leftovers."""

    def __init__(self, tmp_path_factory, name: str, cls) -> None:
        self.log_dir = tmp_path_factory.mktemp(f"{name}-logs")
        self.name, self.cls = name, cls
        self.started: list[ServerProcess] = []
        self.numbers = itertools.count()  # thread-safe under the GIL

    def __enter__(self):
        def _launch(args_or_urls: list[str], **kwargs) -> ServerProcess:
            log = os.path.join(self.log_dir, f"{self.name}{next(self.numbers)}.log")
            proc = self.cls(args_or_urls, log, **kwargs)
            self.started.append(proc)
            _LIVE.append(proc)
            return proc.start()

        return _launch

    def __exit__(self, *exc) -> None:
        leftovers = []
        for proc in self.started:
            leftovers += proc.stop()
            _LIVE.remove(proc)
        assert not leftovers, f"{self.name} processes had to be SIGKILLed: {leftovers}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, proc in enumerate(_LIVE):
            kind = "router" if isinstance(proc, RouterProcess) else "server"
            report.sections.append((f"{kind} {i} log ({proc.log_path})", proc.log_tail()))
