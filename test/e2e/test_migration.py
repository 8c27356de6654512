"""End-to-end: a sealed shard moves while its request decodes (``defrag.py`` -> ``DcpMigrate`` ->
``migration.py`` -> ``shipping.ship``) on a real 4-rank CPU server with overlap scheduling on.

``SGLANG_DCP_TEST_MIGRATE=1`` makes the DP controller ask, after a home's first report on a
split request, to move its first guest range to a rank holding none of its KV; with
``SGLANG_DCP_POISON_MOVED=1`` the source's copy is overwritten with NaN once moved, so an output
can only equal HF if attention reads the new copy. ``SGLANG_DCP_TEST_MIGRATE_FAIL=mfail-``
corrupts the bytes of those requests' migrations in flight: the receiver's checksum refuses
them and the source must stay as it was.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from hf_reference import hf_greedy, prompts

from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e

RANKS = 4
ARGS = ["--disable-radix-cache", "--dcp-kv-capacity", "512", "--dcp-min-shard-tokens", "64"]
ENV = {"SGLANG_DCP_POISON_MOVED": "1", "SGLANG_DCP_PLANNER_LOG": "1",
       "SGLANG_DCP_TEST_MIGRATE": "1", "SGLANG_DCP_TEST_MIGRATE_FAIL": "mfail-"}  # fmt: skip
MIGRATED = re.compile(r"migrated tokens \[(\d+), (\d+)\) of (\S+) from rank (\d+) to rank (\d+)")
FAILED = re.compile(r"shard move Migration\(rid='([^']+)', src=(\d+), dst=(\d+), start=(\d+)")
MAX_NEW = 48


@pytest.fixture(scope="module")
def server(launch_server, tiny_model_path):
    srv = launch_server([*tiny_dp_args(tiny_model_path, RANKS), *ARGS], env=ENV,
                        startup_timeout=900)  # fmt: skip
    yield srv
    assert not srv.stop()


def generate(server, ids, rid):
    payload = {"rid": rid, "input_ids": ids,
               "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0,
                                   "ignore_eos": True}}  # fmt: skip
    return server.post("/generate", payload, timeout=600)


def log(server) -> str:
    with open(server.log_path, errors="replace") as f:
        return f.read()


def dcp_loads(server):
    return {x["dp_rank"]: x["dcp"] for x in server.get("/v1/loads?include=dcp")["loads"]}


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what} after {timeout:.0f} s"
        time.sleep(0.3)
    return got


def run(server, ids, rid):
    result = {}
    t = threading.Thread(target=lambda: result.update(out=generate(server, ids, rid)))
    t.start()
    return t, result


def test_a_shard_moved_mid_decode_keeps_the_hf_output(server, tiny_model_path):
    ids = prompts(seed=31, count=1, lengths=(700,))[0]
    t, result = run(server, ids, "mig-0")
    a, b, _, src, dst = wait_for(
        lambda: [m for m in MIGRATED.findall(log(server)) if m[2] == "mig-0"], 300,
        "no migration of mig-0",
    )[0]
    a, b, src, dst = int(a), int(b), int(src), int(dst)

    def moved_on():  # the source gave its slots back, the destination holds the range
        loads = dcp_loads(server)
        return loads[src]["guest_kv_tokens"] == 0 and loads[dst]["guest_kv_tokens"] == b - a

    wait_for(moved_on, 60, "the source still holds, or the destination lacks, the range")
    t.join(timeout=600)
    out = result["out"]
    assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)
    dcp = out["meta_info"]["dcp"]
    assert [dst, a, b] in dcp["shards"] and src not in dcp["shard_ranks"], dcp
    assert src != dcp["home_rank"] and dst != dcp["home_rank"]
    assert sum(d["migrations_done"] for d in dcp_loads(server).values()) >= 1


def test_a_failed_migration_leaves_the_source_intact(server, tiny_model_path):
    ids = prompts(seed=37, count=1, lengths=(700,))[0]
    t, result = run(server, ids, "mfail-0")
    failed = wait_for(
        lambda: [m for m in FAILED.findall(log(server)) if m[0] == "mfail-0"], 300,
        "no failed migration of mfail-0",
    )
    src = int(failed[0][1])
    t.join(timeout=600)
    out = result["out"]
    assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)
    dcp = out["meta_info"]["dcp"]
    assert src in dcp["shard_ranks"] and src != dcp["home_rank"], dcp
    assert not [m for m in MIGRATED.findall(log(server)) if m[2] == "mfail-0"]
    assert "checksum" in log(server)


def test_every_rank_and_the_planner_drain(server):
    def idle_and_equal():
        loads = {x["dp_rank"]: x for x in server.get("/v1/loads?include=dcp")["loads"]}
        return all(
            x["num_used_tokens"] == 0
            and x["dcp"]["planner_kv_tokens"] == x["dcp"]["kv_tokens"] == 0
            and x["dcp"]["planner_guest_kv_tokens"] == x["dcp"]["guest_kv_tokens"] == 0
            for x in loads.values()
        )

    wait_for(idle_and_equal, 60, "KV still held (planner or ranks) on an idle server")
    assert "Traceback" not in log(server)
