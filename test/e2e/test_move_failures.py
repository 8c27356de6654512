"""End-to-end: injected shard-move failures (``SGLANG_DCP_INJECT_MOVE_FAILURE``) on a real 4-rank
CPU server. One server serves both regimes: half of all moves fail (``P=0.5``, which ones is a
hash of the move) and every move of the ``allfail-`` requests fails
(``SGLANG_DCP_INJECT_MOVE_FAILURE_RID=allfail-@0``, the ``P=1`` case). A failed move keeps its range on the home: every output still equals HF (home copies
of the moves that did happen are poisoned), ``meta_info["dcp"]`` shows the ranges where they
are, and the planner's books follow the ranks' reports (sglang/ledger.py): its guest KV per rank
equals what the ranks hold while a split request decodes, and both sides are empty once idle.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import pytest

from hf_reference import hf_greedy, prompts

from sglang_dcp.exchange.faults import move_fault
from sglang_dcp.planner.base import Migration
from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e

RANKS = 4
# --chunked-prefill-size -1: the home prefills each prompt whole, so every move is a whole sealed
# shard and a failed one stays on the home (a failed piece of a chunked prefill into shards
# aborts its request instead: test_prefill_shards.py)
SHARD_ARGS = ["--dcp-kv-capacity", "512", "--dcp-min-shard-tokens", "64",
              "--chunked-prefill-size", "-1"]  # fmt: skip
MAX_NEW = 8
SHIPPED = re.compile(r"shipped tokens \[(\d+), (\d+)\) of (\S+) from rank (\d+) to rank (\d+)")
FAILED = re.compile(
    r"shard move Migration\(rid='([^']+)', src=(\d+), dst=(\d+), start=(\d+), end=(\d+)\) failed"
)


P = 0.5
ALL_FAIL = "allfail-"


@pytest.fixture(scope="module")
def server(launch_server, tiny_model_path):
    env = {"SGLANG_DCP_POISON_MOVED": "1", "SGLANG_DCP_PLANNER_LOG": "1",
           "SGLANG_DCP_INJECT_MOVE_FAILURE": str(P),
           "SGLANG_DCP_INJECT_MOVE_FAILURE_RID": f"{ALL_FAIL}@0"}  # fmt: skip
    srv = launch_server(
        [*tiny_dp_args(tiny_model_path, RANKS), *SHARD_ARGS], env=env, startup_timeout=900
    )
    yield srv
    assert not srv.stop()  # one server at a time on this machine's few cores


def injected(m: Migration):
    """Where the server's fault hook fails ``m`` (``None``: it does not)."""
    return move_fault(m, 1.0 if m.rid.startswith(ALL_FAIL) else P)


def generate(server, ids, rid, max_new=MAX_NEW):
    payload = {"rid": rid, "input_ids": ids,
               "sampling_params": {"max_new_tokens": max_new, "temperature": 0,
                                   "ignore_eos": True}}  # fmt: skip
    return server.post("/generate", payload, timeout=600)


def moves(server):
    """(done, failed): the server's shard moves as ``Migration``s, from its log."""
    with open(server.log_path, errors="replace") as f:
        log = f.read()
    done = {Migration(r, int(s), int(d), int(a), int(b)) for a, b, r, s, d in SHIPPED.findall(log)}
    failed = {Migration(r, int(s), int(d), int(a), int(b)) for r, s, d, a, b in FAILED.findall(log)}
    return done, failed, log


def dcp_loads(server):
    return {x["dp_rank"]: x["dcp"] for x in server.get("/v1/loads?include=dcp")["loads"]}


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} after {timeout:.0f} s"
        time.sleep(0.3)


@pytest.mark.parametrize("prefix", [ALL_FAIL, "inject-"], ids=["P=1", "P=0.5"])
def test_outputs_equal_hf_and_exactly_the_injected_moves_fail(server, tiny_model_path, prefix):
    batch = prompts(seed=21, count=3, lengths=(1300, 40, 1800))
    for i, ids in enumerate(batch):
        out = generate(server, ids, f"{prefix}{i}")
        assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW), len(ids)
        dcp = out["meta_info"]["dcp"]
        # the ranges at finish: the tail holds the prompt and all outputs but the last
        assert dcp["shards"][-1][2] == len(ids) + MAX_NEW - 1
        away = {tuple(s) for s in dcp["shards"] if s[0] != dcp["home_rank"]}
        done, failed, _ = moves(server)
        mine = {m for m in done | failed if m.rid == f"{prefix}{i}"}
        assert away == {(m.dst, m.start, m.end) for m in done if m.rid == f"{prefix}{i}"}
        assert len(dcp["shard_ranks"]) == dcp["degree"] == 1 + len({r for r, *_ in away})
        if len(ids) > 500:
            assert mine, f"a {len(ids)}-token prompt over 4 x 512 planner tokens was not split"
    done, failed, _ = moves(server)
    done = {m for m in done if m.rid.startswith(prefix)}
    failed = {m for m in failed if m.rid.startswith(prefix)}
    assert failed and all(injected(m) is not None for m in failed)
    assert all(injected(m) is None for m in done)
    if prefix == ALL_FAIL:
        assert not done
    else:  # some moves happen, some do not (which ones: a hash of each move, the same every run)
        assert done


@pytest.mark.parametrize("rid", [f"{ALL_FAIL}books", "books"], ids=["P=1", "P=0.5"])
def test_the_planners_books_follow_the_ranks(server, rid):
    # 1300 + 300 tokens over 4 x 512: split over 3-4 ranks, and decoding long enough to look
    ids = prompts(seed=23, count=1, lengths=(1300,))[0]
    t = threading.Thread(target=lambda: generate(server, ids, rid, max_new=300), daemon=True)
    t.start()
    wait_for(lambda: any(m.rid == rid for s in moves(server)[:2] for m in s), 300, "no moves")
    done, failed, _ = moves(server)
    mine_done = [m for m in done if m.rid == rid]
    mine_failed = [m for m in failed if m.rid == rid]
    home = (mine_done + mine_failed)[0].src

    def books_match():
        loads = dcp_loads(server)
        held = [loads[r]["guest_kv_tokens"] for r in range(RANKS)]
        planner = [loads[r]["planner_guest_kv_tokens"] for r in range(RANKS)]
        expected = [sum(m.end - m.start for m in mine_done if m.dst == r) for r in range(RANKS)]
        # the home's reservation covers every token that did not move (the prompt's and the
        # new ones): the view is the one after the home's report, not the admission's
        at_home = loads[home]["planner_kv_tokens"] >= len(ids) - sum(expected)
        return held == planner == expected and at_home and loads

    wait_for(books_match, 60, "the planner's books never matched the ranks'")
    assert t.is_alive(), "the request ended before the check: make it decode longer"
    if mine_failed:  # the home's report moved the failed ranges back in the planner's books
        with open(server.log_path, errors="replace") as f:
            assert f"planner ledger rid={rid}" in f.read()
    abort = urllib.request.Request(
        server.url + "/abort_request", data=f'{{"rid": "{rid}"}}'.encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(abort, timeout=30).close()
    t.join(timeout=120)

    def idle_and_equal():
        loads = dcp_loads(server)
        return all(
            d["planner_kv_tokens"] == d["kv_tokens"] == 0
            and d["planner_guest_kv_tokens"] == d["guest_kv_tokens"] == 0
            for d in loads.values()
        )

    wait_for(idle_and_equal, 60, "KV still held (planner or ranks) on an idle server")
