"""End-to-end: prompts larger than one rank's KV, prefilled straight into shards (issue 18).

4 CPU DP ranks whose SGLang pools are capped (``--max-total-tokens``) to about a third of the
long prompt, with chunked prefill: the home prefills the prompt chunk by chunk, each chunk's
tokens placed on other ranks leave it right after the chunk's forward, and later chunks attend to
them through the exchange. ``SGLANG_DCP_POISON_MOVED=1`` overwrites the home's copy of every
shipped piece with NaN, so the greedy output can only equal HF's if every chunk really read the
remote part of its prefix through the exchange. Aborts mid-prefill and mid-decode and a failed
chunk move leave every rank's pool empty; a prompt over the whole cluster is a 400. One server for
the whole module.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from hf_reference import hf_greedy, prompts
from test_server_dcp import wait_drained

from sglang_dcp.testing.server import tiny_dp_args
from sglang_dcp.testing.usage import KvUsageSampler

pytestmark = pytest.mark.e2e

RANKS = 4
POOL = 256  # SGLang's KV pool per rank (tokens)
CHUNK = 128  # --chunked-prefill-size: 32 tokens per rank (SGLang divides it by --dp-size)
PROMPT = 3 * POOL + 96  # over three ranks' worth: the home keeps part of it, no rank holds it
MAX_NEW = 8
ARGS = ["--max-total-tokens", str(POOL),
        "--chunked-prefill-size", str(CHUNK), "--dcp-min-shard-tokens", "64"]  # fmt: skip
# the moves of "fail-*" requests from token 64 on fail (exchange/faults.py)
ENV = {"SGLANG_DCP_POISON_MOVED": "1", "SGLANG_DCP_INJECT_MOVE_FAILURE_RID": "fail-@64"}


@pytest.fixture(scope="module")
def server(launch_server, tiny_model_path):
    return launch_server([*tiny_dp_args(tiny_model_path, RANKS), *ARGS], env=ENV,
                         startup_timeout=900)  # fmt: skip


def generate(server, ids, rid, max_new=MAX_NEW):
    payload = {"rid": rid, "input_ids": ids,
               "sampling_params": {"max_new_tokens": max_new, "temperature": 0,
                                   "ignore_eos": True}}  # fmt: skip
    return server.post("/generate", payload, timeout=600)


def loads(server):
    return {x["dp_rank"]: x for x in server.get("/v1/loads?include=dcp")["loads"]}


def served_over_ranks(server, model_path, ids, rid) -> str:
    """Serve ``ids`` (a prompt of about three ranks' KV) as ``rid``: greedy output = HF, KV on
    >= 3 ranks with the tail at home, no rank over its pool, no poisoned read; returns the log."""
    with KvUsageSampler(server, RANKS) as s:
        out = generate(server, ids, rid, max_new=MAX_NEW)
    assert out["output_ids"] == hf_greedy(model_path, ids, MAX_NEW)
    dcp = out["meta_info"]["dcp"]
    assert dcp["degree"] >= 3 and len({r for r, *_ in dcp["shards"]}) >= 3, dcp
    assert dcp["shards"][-1][0] == dcp["home_rank"] and dcp["shards"][-1][1] < PROMPT, dcp
    assert all(p <= POOL for p in s.peak), f"a rank went over its {POOL}-token pool: {s.peak}"
    assert s.most_ranks >= 3, f"KV was never on 3 ranks at once: {s.most_ranks}"
    with open(server.log_path, errors="replace") as f:
        log = f.read()
    assert "reads poisoned KV" not in log and "is NaN" not in log
    wait_drained(server)
    return log


def test_a_prompt_of_three_ranks_kv_is_served_and_equals_hf(server, tiny_model_path):
    served_over_ranks(server, tiny_model_path, prompts(seed=41, count=1, lengths=(PROMPT,))[0],
                      "long")  # fmt: skip


def test_abort_mid_prefill_frees_every_rank(server):
    ids = prompts(seed=43, count=1, lengths=(PROMPT,))[0]
    result = {}
    t = threading.Thread(target=lambda: result.update(out=generate(server, ids, "abort-pf")))
    t.start()
    deadline = time.monotonic() + 120
    # wait until some piece has left the home (another rank holds guest KV), mid-prefill
    while not any(x["dcp"]["guest_kv_tokens"] for x in loads(server).values()):
        assert time.monotonic() < deadline and t.is_alive(), "no piece ever shipped"
        time.sleep(0.05)
    abort = urllib.request.Request(
        server.url + "/abort_request", data=json.dumps({"rid": "abort-pf"}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(abort, timeout=30).close()
    t.join(timeout=120)
    assert result["out"]["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(result["out"]["output_ids"]) == 0, "aborted after its prefill, not during"
    wait_drained(server)


def test_abort_mid_decode_frees_every_rank(server):
    ids = prompts(seed=59, count=1, lengths=(PROMPT,))[0]
    body = json.dumps({"rid": "abort-dec", "input_ids": ids, "stream": True,
                       "sampling_params": {"max_new_tokens": 100, "temperature": 0,
                                           "ignore_eos": True}}).encode()  # fmt: skip
    req = urllib.request.Request(server.url + "/generate", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=300) as r:
        chunks = 0
        while chunks < 3:  # three tokens out: its prefill is over, it decodes
            line = r.readline()
            assert line, "the stream ended before the request decoded"
            chunks += line.startswith(b"data: {")
        abort = urllib.request.Request(
            server.url + "/abort_request", data=json.dumps({"rid": "abort-dec"}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(abort, timeout=30).close()
        rest = r.read().decode()
    last = [x for x in rest.splitlines() if x.startswith("data: {")][-1]
    assert json.loads(last[6:])["meta_info"]["finish_reason"]["type"] == "abort", last
    wait_drained(server)


def test_a_prompt_larger_than_the_cluster_is_a_400_and_the_server_serves_on(server):
    ids = prompts(seed=47, count=1, lengths=(RANKS * POOL + 64,))[0]
    with pytest.raises(urllib.error.HTTPError) as e:
        generate(server, ids, "too-long")
    assert e.value.code == 400 and "does not fit" in e.value.read().decode()
    assert len(generate(server, ids[:50], "short")["output_ids"]) == MAX_NEW
    wait_drained(server)


def test_a_failed_chunk_move_fails_the_request_with_its_reason(server):
    ids = prompts(seed=53, count=1, lengths=(PROMPT,))[0]
    try:
        out = generate(server, ids, "fail-move")
        finish, body = out["meta_info"]["finish_reason"], json.dumps(out)
        assert finish["type"] == "abort", finish
    except urllib.error.HTTPError as e:
        body = e.read().decode()
    assert "moving prefill tokens [64, 96) of fail-move" in body, body
    with open(server.log_path, errors="replace") as f:
        assert "shipped tokens [0, 32) of fail-move" in f.read()  # it failed mid-prefill
    wait_drained(server)
    assert len(generate(server, ids[:50], "after-fail")["output_ids"]) == MAX_NEW
