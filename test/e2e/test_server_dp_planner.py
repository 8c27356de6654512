"""End-to-end: the sglang-dcp planner dispatches in the DP controller of a real 2-rank server.

Read-only view of the planner: with ``SGLANG_DCP_PLANNER_LOG=1`` the DP controller logs one
line per admit / finish / reject (``dispatcher.DcpDispatcher``) with the planner's live count
and per-rank KV; the tests read them from the server log. ``--max-total-tokens`` makes the KV
small enough that a request can be too big for any rank. The server is ``dp2_server``
(conftest), shared with the other ``test_server_dp*.py`` modules; this last one stops it.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from hf_reference import hf_greedy, prompts

from dp2 import KV_PER_RANK

pytestmark = pytest.mark.e2e

MAX_NEW = 8
LINE = re.compile(
    r"sglang_dcp: planner (\w+) rid=(\S+)(?: home=(\d+))?.* live=(\d+) kv=\[([\d, ]+)\]"
)


@pytest.fixture(scope="module")
def server(dp2_server):
    return dp2_server


def planner_events(server):
    with open(server.log_path, errors="replace") as f:
        return [m.groups() for m in map(LINE.search, f) if m]


def admitted_home(server, rid):
    homes = [int(h) for ev, r, h, *_ in planner_events(server) if ev == "admit" and r == rid]
    assert len(homes) == 1, f"{rid} admitted {len(homes)} times"
    return homes[0]


def wait_idle(server, timeout=20.0):
    """The planner's last logged state is empty: no live request, no reserved KV."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = planner_events(server)
        if events and events[-1][3] == "0" and events[-1][4] == "0, 0":
            return events
        time.sleep(0.2)
    raise AssertionError(f"planner not idle; last events: {planner_events(server)[-3:]}")


def generate(server, input_ids, rid, max_new=MAX_NEW, **extra):
    payload = {
        "rid": rid,
        "input_ids": input_ids,
        "sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True},
        **extra,
    }
    return server.post("/generate", payload)


def test_the_planner_dispatches(server):
    with open(server.log_path, errors="replace") as f:
        log = f.read()
    assert f"planner dcp routes requests in the DP controller (2 ranks, {KV_PER_RANK} KV" in log


def test_requests_land_where_the_planner_chose_and_match_hf(server, tiny_model_path):
    batch = prompts(seed=7, count=8, lengths=(5, 40, 300, 17))
    rids = [f"land-{i}" for i in range(len(batch))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outs = list(pool.map(lambda a: generate(server, *a), zip(batch, rids)))
    homes = [admitted_home(server, rid) for rid in rids]
    assert [o["meta_info"]["dp_rank"] for o in outs] == homes
    assert set(homes) == {0, 1}
    for ids, o in zip(batch, outs):
        assert o["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)
    wait_idle(server)


@pytest.mark.parametrize("rank", [0, 1])
def test_routed_dp_rank_pins_the_home(server, tiny_model_path, rank):
    ids = prompts(seed=11 + rank, count=1, lengths=(23,))[0]
    for i in range(2):
        rid = f"pin-{rank}-{i}"
        out = generate(server, ids, rid, routed_dp_rank=rank)
        assert admitted_home(server, rid) == rank == out["meta_info"]["dp_rank"]
        assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)
    wait_idle(server)


def test_an_abort_frees_the_planner(server):
    result = {}

    def long_request():
        result["out"] = generate(server, [1, 2, 3, 4, 5], "to-abort", max_new=3000)

    t = threading.Thread(target=long_request)
    t.start()
    deadline = time.monotonic() + 30
    while not any(ev == "admit" and r == "to-abort" for ev, r, *_ in planner_events(server)):
        assert time.monotonic() < deadline, "request never admitted"
        time.sleep(0.2)
    abort = urllib.request.Request(
        server.url + "/abort_request",
        data=json.dumps({"rid": "to-abort"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(abort, timeout=30).close()  # empty body
    t.join(timeout=60)
    assert result["out"]["meta_info"]["finish_reason"]["type"] == "abort"
    events = wait_idle(server)
    assert ("finish", "to-abort") in {(ev, r) for ev, r, *_ in events}


def test_a_request_no_rank_can_hold_is_a_400(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        # a prompt the two ranks cannot hold while its home keeps one prefill chunk in flight
        # (max_new_tokens alone would not do: a reservation is capped at what SGLang decodes,
        # max_req_len - prompt - 1, dispatcher.py), within the model's context length
        generate(server, [1] * (2 * KV_PER_RANK - 192), "too-big")
    assert e.value.code == 400
    assert "planner rejected" in e.value.read().decode()
    assert any(ev == "reject" and r == "too-big" for ev, r, *_ in planner_events(server))
    # The server still serves.
    out = generate(server, [7, 8, 9], "after-reject")
    assert len(out["output_ids"]) == MAX_NEW
    wait_idle(server)


def test_shutdown_is_clean(server):
    import socket

    assert server.stop() == [], "processes survived SIGTERM"
    with socket.socket() as s:  # nothing listens on the port any more
        assert s.connect_ex(("127.0.0.1", server.port)) != 0
