"""Pytest fixtures for end-to-end tests against a real server.

Enable with ``pytest_plugins = ["sglang_dcp.testing.pytest_plugin"]`` in a conftest.

- ``tiny_model_path``: the tiny Qwen3-MoE checkpoint, built once per session.
- ``launch_server``: a factory ``launch_server(args, **kw) -> ServerProcess``; every server it
  started is stopped at the end of the fixture's scope (module), and a test fails if a server
  left processes behind. When a test fails, each live server's log tail is attached to the
  report.
"""

from __future__ import annotations

import os

import pytest

from sglang_dcp.testing.server import ServerProcess

_LIVE: list[ServerProcess] = []


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    from sglang_dcp.testing.tiny_model import build

    return build(str(tmp_path_factory.mktemp("models") / "tiny-qwen3-moe"), seed=0)


@pytest.fixture(scope="module")
def launch_server(tmp_path_factory):
    started: list[ServerProcess] = []
    log_dir = tmp_path_factory.mktemp("server-logs")

    def _launch(args: list[str], **kwargs) -> ServerProcess:
        log = os.path.join(log_dir, f"server{len(started)}.log")
        srv = ServerProcess(args, log, **kwargs)
        started.append(srv)
        _LIVE.append(srv)
        return srv.start()

    yield _launch
    leftovers = []
    for srv in started:
        leftovers += srv.stop()
        _LIVE.remove(srv)
    assert not leftovers, f"server processes had to be SIGKILLed: {leftovers}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, srv in enumerate(_LIVE):
            report.sections.append((f"server {i} log ({srv.log_path})", srv.log_tail()))
