"""Soak: minutes of mixed traffic on a 4-rank sharding server, then the books must balance.
Overlap scheduling is on and split requests migrate a shard while they decode.

Clients run concurrently for ``SGLANG_DCP_SOAK_S`` seconds (default 120): short and long
(split) prompts, streamed and not, aborted mid-decode, clients that drop the connection
mid-stream, and malformed bodies. Every request either completes, is answered 4xx with a reason,
or was cut by its own client; nothing gets a 5xx. Afterwards no rank holds KV, every rank is
still serving, and the same greedy probes give the same outputs as before the soak (home copies
of shipped KV poisoned throughout).

Shard migration shares this server (one server start less for the suite):
``SGLANG_DCP_TEST_MIGRATE=1`` makes the DP controller ask, after a home's first report on a
split request, to move its first guest range to a rank holding none of its KV (``defrag.py``
-> ``DcpMigrate`` -> ``migration.py`` -> ``shipping.ship``), so every split request of the soak
with a free rank migrates once while it decodes; the source's copy is poisoned once moved, so an
output can only equal HF if attention reads the new copy. ``SGLANG_DCP_TEST_MIGRATE_FAIL=mfail-``
corrupts the bytes of those requests' migrations in flight: the receiver's checksum refuses
them and the source must stay as it was.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import re

import pytest

from hf_reference import hf_greedy, prompts
from test_server_dcp import ENV, RANKS, SHARD_ARGS, generate, loads, wait_drained

from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e

SOAK_S = float(os.environ.get("SGLANG_DCP_SOAK_S", "120"))
CLIENTS = 6
KINDS = ("short", "long", "stream", "abort", "disconnect", "malformed")


MIGRATE_ENV = {"SGLANG_DCP_TEST_MIGRATE": "1", "SGLANG_DCP_TEST_MIGRATE_FAIL": "mfail-"}
MIGRATED = re.compile(r"migrated tokens \[(\d+), (\d+)\) of (\S+) from rank (\d+) to rank (\d+)")
FAILED = re.compile(r"shard move Migration\(rid='([^']+)', src=(\d+), dst=(\d+), start=(\d+)")
MIGRATE_NEW = 48


@pytest.fixture(scope="module")
def server(launch_server, tiny_model_path):
    return launch_server(
        # degree <= 3 of 4 ranks: every split request has a rank holding none of its KV, where
        # SGLANG_DCP_TEST_MIGRATE moves its first guest range (an idle 4-rank server now
        # spreads a 700-token prompt over all 4 ranks when it may)
        [*tiny_dp_args(tiny_model_path, RANKS), *SHARD_ARGS, "--dcp-max-degree", "3"],
        env={**ENV, **MIGRATE_ENV},
        startup_timeout=900,
    )  # fmt: skip


def _conn(server, timeout=600):
    u = urlparse(server.url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def _post(server, path, body, timeout=600):
    c = _conn(server, timeout)
    c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def _payload(ids, max_new, rid=None, stream=False):
    p = {"input_ids": ids, "stream": stream,
         "sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}}
    if rid:
        p["rid"] = rid
    return json.dumps(p)


def _one(server, kind: str, rng: random.Random, n: int) -> str:
    """One request of ``kind``; returns its outcome ("ok", "4xx", "cut") or raises."""
    short = prompts(seed=1000 + n, count=1, lengths=(rng.choice((20, 60, 120)),))[0]
    long = prompts(seed=2000 + n, count=1, lengths=(rng.choice((700, 1300)),))[0]
    if kind in ("short", "long"):
        ids = short if kind == "short" else long
        status, data = _post(server, "/generate", _payload(ids, rng.randint(1, 12)))
        assert status == 200, (kind, status, data[:300])
        assert len(json.loads(data)["output_ids"]) >= 1
        return "ok"
    if kind == "malformed":
        body = rng.choice((
            '{"input_ids": [1, 2], "sampling_params": {"max_new_tokens": "ten"}}',
            '{"input_ids": "abc"}', '{"text": 5}', "{not json",
            '{"input_ids": [1, 2], "sampling_params": {"temperature": -3}}',
        ))  # fmt: skip
        status, data = _post(server, "/generate", body, timeout=120)
        assert 400 <= status < 500, (body, status, data[:300])
        return "4xx"
    ids = long if rng.random() < 0.5 else short
    rid = f"soak-{kind}-{n}"
    c = _conn(server)
    c.request("POST", "/generate", body=_payload(ids, 40, rid, stream=True),
              headers={"Content-Type": "application/json"})  # fmt: skip
    r = c.getresponse()
    assert r.status == 200, (kind, r.status)
    if kind == "stream":
        body = r.read().decode()
        assert "[DONE]" in body, body[-300:]
        c.close()
        return "ok"
    r.readline()  # the first chunk
    if kind == "disconnect":
        c.close()  # the client goes away mid-stream
        return "cut"
    status, _ = _post(server, "/abort_request", json.dumps({"rid": rid}), timeout=60)
    assert status == 200
    r.read()
    c.close()
    return "cut"


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
    payload = {"rid": rid, "input_ids": ids,
               "sampling_params": {"max_new_tokens": MIGRATE_NEW, "temperature": 0,
                                   "ignore_eos": True}}  # fmt: skip
    t = threading.Thread(
        target=lambda: result.update(out=server.post("/generate", payload, timeout=600))
    )
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
    assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MIGRATE_NEW)
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
    assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MIGRATE_NEW)
    dcp = out["meta_info"]["dcp"]
    assert src in dcp["shard_ranks"] and src != dcp["home_rank"], dcp
    assert not [m for m in MIGRATED.findall(log(server)) if m[2] == "mfail-0"]
    assert "checksum" in log(server)


def test_minutes_of_mixed_traffic_leave_nothing_behind(server):
    probes = prompts(seed=77, count=3, lengths=(40, 900, 1300))
    before = [generate(server, ids)["output_ids"] for ids in probes]
    deadline = time.monotonic() + SOAK_S
    outcomes: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(k)
        n = 0
        while time.monotonic() < deadline and not errors:
            kind = rng.choice(KINDS)
            n += 1
            try:
                out = _one(server, kind, rng, k * 100_000 + n)
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                with lock:
                    errors.append(f"{kind}: {type(e).__name__}: {e}"[:500])
                return
            with lock:
                outcomes[(kind, out)] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SOAK_S + 900)
    assert not errors, errors
    assert server.proc.poll() is None and server.ready(), "the server died during the soak"
    for kind in KINDS:
        assert any(k == kind for k, _ in outcomes), (kind, outcomes)
    print(f"soak {SOAK_S:.0f} s: {dict(outcomes)}")
    with open(server.log_path, errors="replace") as f:
        log = f.read()
    assert "reads poisoned KV" not in log and " is NaN (" not in log, "a row read moved KV"
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:4000]
    wait_drained(server, timeout=180)
    assert all(x["num_used_tokens"] == 0 for x in loads(server).values())
    after = [generate(server, ids)["output_ids"] for ids in probes]
    assert after == before


def test_after_it_all_every_rank_and_the_planner_drain(server):
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
