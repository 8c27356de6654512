"""``python -m sglang_dcp.launch_server --demo``: builds the tiny model in the cache folder and
serves it with DP attention on 2 ranks, announcing the URL and a ready-to-paste request."""

from __future__ import annotations

import os
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
    assert len(srv.get("/v1/loads")["loads"]) == 2
