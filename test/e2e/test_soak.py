"""Soak: minutes of mixed traffic on a 4-rank sharding server, then the books must balance.

Clients run concurrently for ``SGLANG_DCP_SOAK_S`` seconds (default 300): short and long
(split) prompts, streamed and not, aborted mid-decode, clients that drop the connection
mid-stream, and malformed bodies. Every request either completes, is answered 4xx with a reason,
or was cut by its own client; nothing gets a 5xx. Afterwards no rank holds KV, every rank is
still serving, and the same greedy probes give the same outputs as before the soak (home copies
of shipped KV poisoned throughout).
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

import pytest

from hf_reference import prompts
from test_server_dcp import ENV, RANKS, SHARD_ARGS, generate, loads, wait_drained

from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e

SOAK_S = float(os.environ.get("SGLANG_DCP_SOAK_S", "300"))
CLIENTS = 6
KINDS = ("short", "long", "stream", "abort", "disconnect", "malformed")


@pytest.fixture(scope="module")
def server(launch_server, tiny_model_path):
    return launch_server(
        [*tiny_dp_args(tiny_model_path, RANKS), *SHARD_ARGS], env=ENV, startup_timeout=900
    )


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
