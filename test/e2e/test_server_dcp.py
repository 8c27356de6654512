"""End-to-end: requests whose KV spans DP ranks on a real 4-rank CPU server.

``--tp-size 4 --dp-size 4 --enable-dp-attention`` with KV sharding on (the radix cache on too)
and a small planner budget per rank (``--dcp-kv-capacity``), so long prompts cannot sit on one
rank and are spread over 2-4 ranks. ``SGLANG_DCP_POISON_MOVED=1`` overwrites the home's copy of
every shipped shard with NaN, so an output can only be right if attention really read the
guest shards on the other ranks through the exchange. ``--dcp-ranks-per-node 2``: two "nodes" of
two ranks, so a request split over its home's node runs node-scoped steps (the exchange among
the node's ranks only) and one over 3-4 ranks steps across both.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from hf_reference import hf_greedy, prompts

from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e

RANKS = 4
KV_PER_RANK = 512  # planner budget per rank: a prompt over ~500 tokens must be split
SHARD_ARGS = [  # the radix cache stays on (issue 26)
    "--dcp-kv-capacity", str(KV_PER_RANK),
    "--dcp-min-shard-tokens", "64",
    "--dcp-ranks-per-node", "2",
]  # fmt: skip
ENV = {"SGLANG_DCP_POISON_MOVED": "1", "SGLANG_DCP_PLANNER_LOG": "1"}
MAX_NEW = 8
SHORT, LONG = (20, 90), (700, 1300, 1800)
SHIPPED = re.compile(r"shipped tokens \[(\d+), (\d+)\) of (\S+) from rank (\d+) to rank (\d+)")


@pytest.fixture(scope="module")
def started(launch_server, tiny_model_path):
    """The sharding server and the same model with the round-robin baseline (nothing is split),
    started together (a start leaves a third of two cores idle)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        dcp = pool.submit(launch_server, [*tiny_dp_args(tiny_model_path, RANKS), *SHARD_ARGS],
                          env=ENV, startup_timeout=900)  # fmt: skip
        rr = pool.submit(launch_server, [*tiny_dp_args(tiny_model_path, RANKS), "--dcp-policy",
                                         "round_robin"], startup_timeout=900)  # fmt: skip
        return {"dcp": dcp.result(), "rr": rr.result()}


@pytest.fixture(scope="module")
def server(started):
    return started["dcp"]


@pytest.fixture(scope="module")
def rr_server(started):
    return started["rr"]


@pytest.fixture(scope="module")
def hf(tiny_model_path):
    cache = {}

    def greedy(ids, max_new=MAX_NEW):
        key = (tuple(ids), max_new)
        if key not in cache:
            cache[key] = hf_greedy(tiny_model_path, ids, max_new)
        return cache[key]

    return greedy


def generate(server, ids, rid=None, max_new=MAX_NEW, timeout=600.0):
    payload = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True},
    }
    if rid is not None:
        payload["rid"] = rid
    return server.post("/generate", payload, timeout=timeout)


def loads(server):
    return {x["dp_rank"]: x for x in server.get("/v1/loads")["loads"]}


def wait_drained(server, timeout=60.0):
    """Every rank's KV pool is empty again: no request's and no guest shard's slots held."""
    deadline = time.monotonic() + timeout
    while True:
        used = {r: x["num_used_tokens"] for r, x in loads(server).items()}
        if not any(used.values()):
            return
        assert time.monotonic() < deadline, f"KV still held after {timeout:.0f} s: {used}"
        time.sleep(0.5)


def shipped(server, rid):
    with open(server.log_path, errors="replace") as f:
        return [
            (int(a), int(b), int(src), int(dst))
            for a, b, r, src, dst in SHIPPED.findall(f.read())
            if r == rid
        ]


def test_long_prompts_spread_over_ranks_and_match_hf(server, hf):
    before = _dcp_stats(server)
    scopes = set()
    for i, ids in enumerate(prompts(seed=3, count=5, lengths=SHORT + LONG)):
        rid = f"spread-{i}"
        out = generate(server, ids, rid)
        assert out["output_ids"] == hf(ids), f"prompt of {len(ids)} tokens"
        dcp = out["meta_info"]["dcp"]
        assert dcp["home_rank"] == out["meta_info"]["dp_rank"]
        assert len(dcp["shard_ranks"]) == dcp["degree"] and dcp["shard_ranks"][-1] == dcp["home_rank"]
        if len(ids) in SHORT:
            assert dcp["degree"] == 1 and not shipped(server, rid)
        else:
            assert 2 <= dcp["degree"] <= RANKS
            moves = shipped(server, rid)
            assert {dst for *_, dst in moves} == set(dcp["shard_ranks"][:-1])
            assert all(src == dcp["home_rank"] for *_, src, _ in moves)
            scopes.add(len({r // 2 for r in dcp["shard_ranks"]}) == 1)
    wait_drained(server)
    after = _dcp_stats(server)
    node = sum(after[r]["exchange_node_steps"] - before[r]["exchange_node_steps"] for r in after)
    steps = sum(after[r]["active_steps"] - before[r]["active_steps"] for r in after)
    # requests on one node ran node-scoped steps, those across nodes steps over every rank
    assert scopes == {True, False} and 0 < node < steps, (scopes, node, steps)


def _dcp_stats(server):
    return {x["dp_rank"]: x["dcp"] for x in server.get("/v1/loads?include=dcp")["loads"]}


def test_short_requests_never_touch_the_exchange(server, hf):
    """Sharding on, nothing split: no DCP step, no row through the exchange, SGLang's own
    attention for every row (split="no" rows stay 0 by construction)."""
    before = _dcp_stats(server)
    batch = prompts(seed=9, count=8, lengths=SHORT)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda ids: generate(server, ids), batch))
    for ids, out in zip(batch, outs):
        assert out["output_ids"] == hf(ids)
        assert out["meta_info"]["dcp"]["degree"] == 1
    after = _dcp_stats(server)
    for r in range(RANKS):
        assert after[r]["active_steps"] == before[r]["active_steps"], (before[r], after[r])
        assert after[r]["exchange_rows_split"] == before[r]["exchange_rows_split"]
        assert after[r]["exchange_rows_unsplit"] == 0
    wait_drained(server)


def test_the_header_rides_on_sglangs_sync(server, hf):
    """No extra collective per step without news: 50 short requests cost none; a split request
    costs one at its prefill (the pieces that ship right after it, prefill_shards.py), one at its
    first decode and one at its release, none while it decodes."""
    before = _dcp_stats(server)
    batch = prompts(seed=13, count=50, lengths=SHORT)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda ids: generate(server, ids, max_new=4), batch))
    mid = _dcp_stats(server)
    for r in range(RANKS):
        assert mid[r]["header_gathers"] == before[r]["header_gathers"], (before[r], mid[r])
        assert mid[r]["header_steps"] > before[r]["header_steps"]
    ids = prompts(seed=14, count=1, lengths=(1300,))[0]
    out = generate(server, ids, max_new=24)
    assert out["meta_info"]["dcp"]["degree"] >= 2 and out["output_ids"] == hf(ids, 24)
    wait_drained(server)
    after = _dcp_stats(server)
    for r in range(RANKS):
        steps = after[r]["header_steps"] - mid[r]["header_steps"]
        gathers = after[r]["header_gathers"] - mid[r]["header_gathers"]
        assert steps >= 24 and gathers <= 4, (r, steps, gathers)


def test_same_outputs_as_the_round_robin_server(server, rr_server):
    batch = prompts(seed=5, count=6, lengths=SHORT + LONG + (400,))
    with ThreadPoolExecutor(max_workers=3) as pool:
        dcp = list(pool.map(lambda ids: generate(server, ids)["output_ids"], batch))
        rr = list(pool.map(lambda ids: generate(rr_server, ids)["output_ids"], batch))
    assert dcp == rr
    wait_drained(server)


def test_overlap_scheduling_is_on(server):
    """The launcher leaves SGLang's overlap scheduler on with sharding (overlap.py): every test
    of this module runs with step N+1 planned while step N's forward is in flight."""
    info = server.get("/server_info")
    assert info["disable_overlap_schedule"] is False
    assert info["dp_size"] == RANKS and info["enable_dp_attention"] is True


@pytest.mark.timeout(1500)
def test_64_concurrent_mixed_requests_complete(server, hf):
    """64 concurrent requests under overlap scheduling, short and split long ones, while two
    more split requests are aborted mid-decode: every other output equals HF, every rank's KV
    drains, and the steps that freed or moved KV waited for the forward in flight."""
    # one prompt in eight is long enough to be split; on 2 CPU cores each split request holds
    # most of the cluster's 4 x 512-token planner budget, so they run (and wait) one by one
    batch = prompts(seed=11, count=64, lengths=(20, 90, 300, 40, 700, 20, 90, 40))
    aborted = prompts(seed=23, count=2, lengths=(1300, 900))
    before = _dcp_stats(server)
    with ThreadPoolExecutor(max_workers=66) as pool:
        futs = [pool.submit(generate, server, ids, timeout=900) for ids in batch]
        aborts = [
            pool.submit(
                abort_mid_decode, server, ids, f"overlap-abort-{i}", drain=False, wait_s=900
            )
            for i, ids in enumerate(aborted)
        ]
        outs = [f.result() for f in futs]
        for a in aborts:
            a.result()
    for ids, out in zip(batch, outs):
        meta = out["meta_info"]
        assert out["output_ids"] == hf(ids), f"prompt of {len(ids)} tokens: {meta}"
    assert max(o["meta_info"]["dcp"]["degree"] for o in outs if "dcp" in o["meta_info"]) > 1
    wait_drained(server)
    after = _dcp_stats(server)
    for r in range(RANKS):  # every rank saw the moves and the releases, and waited for them
        assert after[r]["header_forward_waits"] > before[r]["header_forward_waits"], after[r]


def test_abort_mid_decode_frees_every_ranks_guest_kv(server):
    abort_mid_decode(server, prompts(seed=13, count=1, lengths=(1300,))[0], "abort-long")


def abort_mid_decode(server, ids, rid, drain=True, wait_s=120.0):
    """Abort a split request once its guest KV is counted on the shard ranks (within
    ``wait_s``); then every rank's KV drains (``drain``; also used by test_server_dcp_mla.py)."""
    result = {}
    t = threading.Thread(
        target=lambda: result.update(out=generate(server, ids, rid, max_new=200))
    )
    t.start()
    deadline = time.monotonic() + wait_s
    while not shipped(server, rid):
        assert time.monotonic() < deadline and t.is_alive(), "the request was never split"
        time.sleep(0.2)
    guests = {dst for *_, dst in shipped(server, rid)}
    # guest KV is counted in the shard ranks' load (snapshots are published periodically)
    deadline = time.monotonic() + 60
    while not all(loads(server)[g]["num_used_tokens"] > 0 for g in guests):
        assert time.monotonic() < deadline and t.is_alive(), loads(server)
        time.sleep(0.5)
    abort = urllib.request.Request(
        server.url + "/abort_request",
        data=json.dumps({"rid": rid}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(abort, timeout=30).close()
    t.join(timeout=120)
    assert result["out"]["meta_info"]["finish_reason"]["type"] == "abort"
    if drain:
        wait_drained(server)


def test_a_request_larger_than_the_cluster_is_a_400(server):
    ids = prompts(seed=17, count=1, lengths=(RANKS * KV_PER_RANK + 64,))[0]
    with pytest.raises(urllib.error.HTTPError) as e:
        generate(server, ids, "too-long")
    assert e.value.code == 400 and "does not fit" in e.value.read().decode()
    assert len(generate(server, ids[:50])["output_ids"]) == MAX_NEW  # still serving


def test_a_dead_scheduler_takes_the_server_down(rr_server):
    """A scheduler that dies brings the whole server down (no hang): SGLang's failure path, its
    peers' SIGQUIT reaching the launcher (through the fork server on CPU)."""
    procs = psutil.Process(rr_server.proc.pid).children(recursive=True)
    # by title (setproctitle): on CPU the fork server's command line names the scheduler module
    titles = [(p, (p.cmdline() or [p.name()])[0]) for p in procs]
    schedulers = [p for p, title in titles if title.startswith("sglang::scheduler")]
    assert len(schedulers) == RANKS, [p.cmdline() for p in procs]
    schedulers[1].send_signal(signal.SIGKILL)
    rr_server.proc.wait(timeout=120)
    with open(rr_server.log_path, errors="replace") as f:
        log = f.read()
    # SGLang's watchdog names the exit; on CPU the fork server says it passed the failure on
    words = ("exit", "died", "killed", "reported a failure")
    assert any(w in log.lower() for w in words), log[-3000:]
