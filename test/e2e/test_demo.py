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


def test_demo_serves_and_announces(launch_server, tmp_path):
    cache = tmp_path / "cache"
    srv = launch_server(["--demo"], env={"SGLANG_DCP_CACHE_DIR": str(cache)})
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
