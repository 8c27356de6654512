"""End-to-end: what a 2-rank DCP server tells its clients (docs/integration.md §6).

``meta_info["dcp"]`` on plain and streamed responses, the Prometheus metrics with one
``dp_rank`` series per rank, and the ``/v1/loads`` ``dcp`` section for both ranks. This build
places every request with degree 1, so the placement is the home rank and the whole prompt.
The server is ``dp2_server`` (conftest), shared with the other ``test_server_dp*.py`` modules.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

pytestmark = pytest.mark.e2e

MAX_NEW = 6
GAUGES = ("guest_kv_tokens", "guest_requests", "home_dcp_requests", "guest_items_last_step",
          "exchange_ms_last_step")  # fmt: skip


@pytest.fixture(scope="module")
def server(dp2_server):
    return dp2_server


def generate(server, rid, input_ids, **extra):
    payload = {
        "rid": rid,
        "input_ids": input_ids,
        "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True},
        **extra,
    }
    return server.post("/generate", payload)


def degree_one(home: int, prompt_len: int, outputs: int = MAX_NEW) -> dict:
    """The ranges of an unsplit request after ``outputs`` tokens: its KV holds the prompt and
    every output token but the newest."""
    return {
        "home_rank": home,
        "degree": 1,
        "shard_ranks": [home],
        "shards": [[home, 0, prompt_len + outputs - 1]],
    }


def text(server, path: str) -> str:
    with urllib.request.urlopen(server.url + path, timeout=30) as r:
        return r.read().decode()


@pytest.mark.parametrize("rank", [0, 1])
def test_meta_info_has_the_placement(server, rank):
    ids = list(range(3, 3 + 17 + rank))
    out = generate(server, f"obs-{rank}", ids, routed_dp_rank=rank)
    meta = out["meta_info"]
    assert meta["dp_rank"] == rank and len(out["output_ids"]) == MAX_NEW
    assert meta["dcp"] == degree_one(rank, len(ids))


def test_unpinned_requests_report_their_planner_home(server):
    for i in range(4):
        ids = list(range(5, 30 + 7 * i))
        meta = generate(server, f"free-{i}", ids)["meta_info"]
        assert meta["dcp"] == degree_one(meta["dp_rank"], len(ids))


def test_every_streamed_chunk_has_the_placement(server):
    ids = list(range(40, 61))
    payload = {
        "rid": "stream", "input_ids": ids, "stream": True, "routed_dp_rank": 1,
        "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True},
    }  # fmt: skip
    req = urllib.request.Request(
        server.url + "/generate", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    chunks = []
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            line = line.decode().strip()
            if line.startswith("data:") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data:") :]))
    assert len(chunks) >= 2
    for c in chunks:
        meta = c["meta_info"]
        assert meta["dcp"] == degree_one(1, len(ids), meta["completion_tokens"]), meta


def degree_counts(body: str) -> dict[str, float]:
    """dp_rank -> placements counted on that home rank (sglang_dcp:degree_count)."""
    out = {}
    for line in body.splitlines():
        if line.startswith("sglang_dcp:degree_count{"):
            head, value = line.rsplit(" ", 1)
            out[head.split('dp_rank="')[1].split('"')[0]] = float(value)
    return out


def eventually(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_metrics_have_one_series_per_rank(server):
    def gauges_at_zero():
        body = text(server, "/metrics")
        for name in GAUGES:
            for rank in (0, 1):
                assert f'sglang_dcp:{name}{{dp_rank="{rank}"}} 0.0' in body, (name, rank)
        assert set(degree_counts(body)) == {"0", "1"}
        return degree_counts(body)

    before = eventually(gauges_at_zero)
    generate(server, "counted", list(range(9, 20)), routed_dp_rank=1)

    def one_more_on_rank_1():
        after = degree_counts(text(server, "/metrics"))
        assert (after["0"], after["1"]) == (before["0"], before["1"] + 1), (before, after)

    eventually(one_more_on_rank_1)


@pytest.mark.parametrize("include", ["all", "dcp"])
def test_loads_have_the_dcp_section_on_both_ranks(server, include):
    loads = server.get(f"/v1/loads?include={include}")["loads"]
    assert sorted(ld["dp_rank"] for ld in loads) == [0, 1]
    for ld in loads:
        dcp = ld["dcp"]
        assert dcp["guest_kv_tokens"] == 0 and dcp["moves_failed"] == 0
        assert set(GAUGES) <= set(dcp)
        assert {"kv_tokens", "planner_kv_tokens", "planner_guest_kv_tokens"} <= set(dcp)
    assert "dcp" not in server.get("/v1/loads?include=core")["loads"][0]
    prom = text(server, "/v1/loads?format=prometheus")
    assert 'sglang_dcp_guest_kv_tokens{dp_rank="1"} 0' in prom


def test_the_planner_view_next_to_the_ranks_own_count(server):
    """Reserved KV while a request runs, and nothing on either side once the server is idle."""
    generate(server, "view", list(range(7, 40)), routed_dp_rank=0)

    def idle_and_equal():
        for ld in server.get("/v1/loads?include=dcp")["loads"]:
            d = ld["dcp"]
            assert (d["planner_kv_tokens"], d["kv_tokens"]) == (0, 0), ld
            assert d["planner_guest_kv_tokens"] == d["guest_kv_tokens"] == 0, ld

    eventually(idle_and_equal)
