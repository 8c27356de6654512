"""``python -m sglang_dcp.launch_server --demo``: builds the tiny model in the cache folder and
serves it with DP attention on 4 ranks and KV sharding on, announcing the URL and ready-to-paste
requests; a long prompt is spread over several ranks (``demo_client``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hf_reference import hf_greedy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(launch_server, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    srv = launch_server(["--demo"], env={"SGLANG_DCP_CACHE_DIR": str(cache)})
    return srv, cache


def test_demo_serves_and_announces(demo):
    srv, cache = demo
    model = cache / "tiny-qwen3-moe-seed0"
    assert (model / "model.safetensors").exists()

    deadline = time.monotonic() + 30  # the banner follows /health by up to a second
    while "server ready at" not in srv.log_tail(400) and time.monotonic() < deadline:
        time.sleep(0.5)
    log = srv.log_tail(400)
    assert f"server ready at {srv.url}" in log and f"curl -s {srv.url}/generate" in log

    ids = [323, 312, 489, 454, 464]
    out = srv.post("/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}})  # fmt: skip
    assert out["output_ids"] == hf_greedy(os.fspath(model), ids, 4)
    assert len(srv.get("/v1/loads")["loads"]) == 4
    assert "python -m sglang_dcp.demo_client" in log

    done = subprocess.run(
        [sys.executable, "-m", "sglang_dcp.demo_client", "--url", srv.url, "--lengths", "40", "3000"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    short, long = done.stdout.strip().splitlines()
    assert short.strip().startswith("40 tokens:") and "degree 1" in short
    degree = int(long.split("degree ")[1].split(",")[0])
    assert long.strip().startswith("3000 tokens:") and degree >= 3, long


README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
DEMO_URL = "http://127.0.0.1:30000"


def readme_commands() -> list[str]:
    """The README's cheap commands against the demo, as written: its curl requests, the
    demo_client call and ``launch_server --help`` (continuation lines joined, "$ " dropped)."""
    with open(README) as f:
        lines = f.read().splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i].strip().removeprefix("$ ")
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        if line.startswith(f"curl -s {DEMO_URL}") or line.startswith(
            ("python -m sglang_dcp.demo_client --url", "python -m sglang_dcp.launch_server --help")
        ):
            out.append(line.split("  #")[0].strip())
        i += 1
    return out


def test_the_readme_commands_run_as_written(demo):
    srv, cache = demo
    commands = readme_commands()
    assert sum(c.startswith("curl") for c in commands) >= 2, commands
    assert any("demo_client" in c for c in commands), commands
    env = {**os.environ, "SGLANG_DCP_CACHE_DIR": str(cache)}
    env.pop("TRITON_INTERPRET", None)
    for cmd in dict.fromkeys(commands):  # each once
        run = cmd.replace(DEMO_URL, srv.url)
        if run.startswith("python "):  # "python" is the venv's (README, Serving)
            run = f"{sys.executable} {run[len('python '):]}"
        done = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=600,
                              env=env)  # fmt: skip
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
        if cmd.startswith("curl"):
            assert done.stdout.startswith("{") and '"error"' not in done.stdout, done.stdout[:500]
