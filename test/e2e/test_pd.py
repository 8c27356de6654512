"""PD-disaggregated serving through sglang-dcp's launchers (issue 24): one prefill server, one
decode server whose DP controller runs the planner, and smg's router in PD mode, over SGLang's
mooncake transfer engine (TCP) on CPU. One trio for the whole module (the suite's time budget).

Short prompts: greedy output through the router equals HF transformers; each server's log says
which PD CPU settings the launcher added; a prompt larger than one decode rank's planner budget
is refused with the planner's reason (KV landing in shards is not built yet); after the requests
every rank of both servers is back to 0 used KV tokens.

4 decode DP ranks: on CPU SGLang padded their KV heads to the TP size (4) while the 1-rank
prefill kept 2, so the prompt's KV landed at the wrong offsets (``sglang/pd_heads.py``).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error

import pytest
from hf_reference import hf_greedy

from sglang_dcp.testing.pd import PdRouterProcess, decode_args, prefill_args
from sglang_dcp.testing.server import free_low_port

pytestmark = pytest.mark.e2e

DECODE_DP = 4
POOL = 16384
BUDGET = 512  # the decode planner's KV tokens per rank (--dcp-kv-capacity)
PROMPTS = [[323, 312, 489, 454], [5, 17, 99, 230, 41, 7, 310, 62, 11]]
NEW = 8


@pytest.fixture(scope="module")
def trio(launch_server, tiny_model_path, tmp_path_factory):
    bootstrap = free_low_port(avoid=0)
    started: dict[str, object] = {}

    def start(name, args):
        started[name] = launch_server(args, startup_timeout=900)

    t0 = time.monotonic()
    threads = [
        threading.Thread(target=start, args=("prefill", prefill_args(tiny_model_path, bootstrap, POOL))),
        threading.Thread(target=start, args=("decode", [
            *decode_args(tiny_model_path, DECODE_DP, POOL), "--dcp-kv-capacity", str(BUDGET)])),
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(started) == {"prefill", "decode"}, "a server failed to start (see its log)"
    log = os.path.join(tmp_path_factory.mktemp("pd-router"), "router.log")
    router = PdRouterProcess(started["prefill"].url, bootstrap, started["decode"].url, log)
    router.start()
    print(f"PD trio up in {time.monotonic() - t0:.0f} s")
    yield started["prefill"], started["decode"], router
    router.stop()


def test_short_prompts_through_the_router_equal_hf(trio, tiny_model_path):
    _, _, router = trio
    for ids in PROMPTS + PROMPTS:  # twice: the prefill server's second request used to kill it
        out = router.post("/generate", {"input_ids": ids, "sampling_params": {
            "max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}})  # fmt: skip
        assert out["output_ids"] == hf_greedy(tiny_model_path, ids, NEW), ids


def test_logs_say_what_the_launcher_set_for_pd_on_cpu(trio):
    prefill, decode, _ = trio
    with open(prefill.log_path, errors="replace") as f:
        plog = f.read()
    with open(decode.log_path, errors="replace") as f:
        dlog = f.read()
    assert "[sglang-dcp] PD prefill on CPU: --disaggregation-transfer-backend mooncake_tcp" in plog
    for flag in ("--disaggregation-transfer-backend mooncake_tcp",
                 "--no-enable-tp-lm-head-all-to-all",
                 "--disaggregation-decode-retraction-backup none"):  # fmt: skip
        assert f"[sglang-dcp] PD decode on CPU: {flag}" in dlog
    assert f"planner dcp routes requests in the DP controller ({DECODE_DP} ranks" in dlog


def test_a_prompt_larger_than_one_decode_rank_is_refused_clearly(trio, tiny_model_path):
    """Until KV lands in shards, a PD decode server places requests whole: one larger than a
    rank's budget gets the planner's 400 through the router, and the next request is served."""
    _, _, router = trio
    with pytest.raises(urllib.error.HTTPError) as e:
        router.post("/generate", {"input_ids": [7] * (BUDGET + 100), "sampling_params": {
            "max_new_tokens": 4, "temperature": 0}})  # fmt: skip
    body = e.value.read().decode()
    assert e.value.code == 400 and "sglang-dcp planner rejected the request" in body, body
    ids = PROMPTS[0]
    out = router.post("/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}})  # fmt: skip
    assert out["output_ids"] == hf_greedy(tiny_model_path, ids, 4)


def test_every_rank_of_both_servers_back_to_zero(trio):
    prefill, decode, _ = trio
    deadline = time.monotonic() + 60
    while True:
        used = [r["num_used_tokens"] for s in (prefill, decode) for r in s.get("/v1/loads")["loads"]]
        if not any(used) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert used == [0] * (1 + DECODE_DP), used
