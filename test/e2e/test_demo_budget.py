"""The planner's budget holds on the demo when a client leaves ``max_new_tokens`` open.

A demo with a 256-token planner budget per rank (``--demo --dcp-kv-capacity 256``: the user's
value replaces the demo's 1024, and a short unset request then decodes ~250 tokens instead of
~1000). Requests with ``max_new_tokens: null`` (``/generate``) and a chat completion without
``max_tokens`` run while ``/v1/loads`` is polled: no rank's used KV ever exceeds 256, and the
``/generate`` one ends with ``finish_reason: length`` at the budget the DP controller wrote into
it. A budget that can never be placed is refused by its binding limit.
"""

from __future__ import annotations

import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.e2e

BUDGET = 256  # KV tokens per rank, a multiple of the planner's 64-token page
PROMPT = [323, 312, 489, 454, 464]


@pytest.fixture(scope="module")
def started(launch_server, tmp_path_factory, tiny_model_path):
    """The budget demo and, at the same time (a start leaves a third of two cores idle), a plain
    one-rank server of another model with no extra flags."""
    cache = tmp_path_factory.mktemp("demo-cache")
    with ThreadPoolExecutor(max_workers=2) as pool:
        demo = pool.submit(launch_server, ["--demo", "--dcp-kv-capacity", str(BUDGET)],
                           env={"SGLANG_DCP_CACHE_DIR": str(cache)})  # fmt: skip
        plain = pool.submit(launch_server, ["--model-path", tiny_model_path, "--dtype", "float32"])
    return {"demo": demo.result(), "plain": plain.result()}


@pytest.fixture(scope="module")
def server(started):
    return started["demo"]


def test_unset_max_new_tokens_stays_within_the_planners_budget(server):
    peak, stop = [0] * 4, threading.Event()

    def watch():
        while not stop.is_set():
            used = [r["num_used_tokens"] for r in server.get("/v1/loads")["loads"]]
            for i, u in enumerate(used):
                peak[i] = max(peak[i], u)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    results = {}

    def generate():
        results["generate"] = server.post("/generate", {"input_ids": PROMPT, "sampling_params": {
            "max_new_tokens": None, "temperature": 0, "ignore_eos": True}})  # fmt: skip

    def chat():
        results["chat"] = server.post("/v1/chat/completions", {
            "model": "demo", "messages": [{"role": "user", "content": "Tell me a story"}]})

    threads = [threading.Thread(target=f) for f in (generate, chat)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    stop.set()
    watcher.join(timeout=10)

    meta = results["generate"]["meta_info"]
    assert meta["finish_reason"]["type"] == "length"
    # the largest budget that keeps prompt + new tokens within one rank's 256, page-rounded
    assert meta["completion_tokens"] == BUDGET - len(PROMPT)
    usage = results["chat"]["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= BUDGET
    assert max(peak) > 0 and all(p <= BUDGET for p in peak), peak


def test_a_budget_that_never_fits_names_the_binding_limit(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        server.post("/generate", {"input_ids": [1, 2], "sampling_params": {
            "max_new_tokens": 1500}})  # fmt: skip
    assert e.value.code == 400
    body = e.value.read().decode()
    assert "max_new_tokens 1500 cannot be reserved" in body, body
    assert f"holds {BUDGET} KV tokens" in body and "even when empty" not in body, body


def test_startup_is_quiet_and_says_what_it_set_for_cpu(server):
    with open(server.log_path, errors="replace") as f:
        log = f.read()
    assert "Ignore import error" not in log  # quiet.py: DEBUG only
    assert "Applied 1 hook(s)" not in log and "Only CUDA" not in log  # ditto; child warnings
    assert "Triton is not supported" not in log  # what is left: SGLang's own INFO lines
    assert "[sglang-dcp] no CUDA device: --disable-cuda-graph" in log


def test_any_model_starts_on_cpu_without_extra_flags(started):
    """No DP attention, no memory fraction, no graph flag: the launcher's CPU defaults."""
    srv = started["plain"]
    with open(srv.log_path, errors="replace") as f:
        log = f.read()
    assert "--disable-cuda-graph --mem-fraction-static 0.5" in log
    out = srv.post("/generate", {"input_ids": PROMPT, "sampling_params": {"max_new_tokens": 2}})
    assert len(out["output_ids"]) == 2
