"""PD-disaggregated serving through sglang-dcp's launchers (issue 24): one prefill server, one
decode server whose DP controller runs the planner, and smg's router in PD mode, over SGLang's
mooncake transfer engine (TCP) on CPU. One trio for the whole module (the suite's time budget).

Short prompts: greedy output through the router equals HF transformers; each server's log says
which PD CPU settings the launcher added; a prompt larger than one decode rank's SGLang pool
lands straight in its shards on 3+ decode ranks and equals HF (``sglang/pd_landing.py``,
``sglang/pd_admission.py``); after the requests every rank of both servers is back to 0 used KV
tokens.

Failures (``sglang/pd_cleanup.py``, fault switches in the servers' env): a failed transfer to
one holder, an abort and a client going away mid-transfer, a holder without room, and last (it
restarts it) the prefill server killed mid-transfer; each frees every rank's KV.

4 decode DP ranks: on CPU SGLang padded their KV heads to the TP size (4) while the 1-rank
prefill kept 2, so the prompt's KV landed at the wrong offsets (``sglang/pd_heads.py``).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
from hf_reference import hf_greedy, prompts

from sglang_dcp.testing.pd import decode_args, prefill_args, start_trio
from sglang_dcp.testing.pd_faults import (Disconnecting, mid_transfer, post, retry_post,
                                          settled_books)
from sglang_dcp.testing.ports import free_low_port
from sglang_dcp.testing.usage import KvUsageSampler

pytestmark = pytest.mark.e2e

DECODE_DP = 4
POOL = 16384  # the prefill server's KV pool (tokens)
# each decode rank's SGLang pool, also the planner's budget (KV tokens); SGLang's decode admission
# keeps --num-reserved-decode-tokens (512) free beside a request at its home
DECODE_POOL = 1024
PROMPTS = [[323, 312, 489, 454], [5, 17, 99, 230, 41, 7, 310, 62, 11]]
NEW = 8
LONG = 2 * DECODE_POOL + 200  # over two decode ranks' pools: it lands on 3 or more
MOST = 3 * DECODE_POOL + 400  # 85% of the decode cluster's KV (with its new tokens)
FAIL_LEN = LONG + 76  # prompts of this length: the transfer to their first holder fails
DELAY_LEN = LONG + 40  # ... the prefill holds their transfer (up to 120 s, until the room fails)
NO_ROOM_LEN = LONG + 112  # ... their holders find no free KV slots
DECODE_ENV = {"SGLANG_DCP_INJECT_PD_LANDING_FAILURE": str(FAIL_LEN),
              "SGLANG_DCP_INJECT_PD_LANDING_DELAY": f"{DELAY_LEN}@120",
              "SGLANG_DCP_INJECT_PD_LANDING_NO_ROOM": str(NO_ROOM_LEN),
              # a dead prefill server: found by SGLang's heartbeat (2 misses 2 s apart), a
              # room's pages held for its drain ack at most 10 s
              "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "2",
              "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "2",
              "SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT": "10"}  # fmt: skip
# SGLang's prefill blacklists a decode session after one failed transfer; its probe readmits it
PREFILL_ENV = {"SGLANG_ENABLE_FAILED_SESSION_PROBE": "1",
               "SGLANG_FAILED_SESSION_PROBE_INTERVAL_S": "1"}  # fmt: skip


@pytest.fixture(scope="module")
def trio(launch_server, tiny_model_path, tmp_path_factory):
    with pd_trio(launch_server, tiny_model_path, tmp_path_factory, DECODE_ENV) as started:
        yield started


@contextmanager
def pd_trio(launch_server, model_path: str, tmp_path_factory, decode_env: dict[str, str],
            extra: tuple[str, ...] = ()):  # fmt: skip
    """The module's trio for ``model_path`` (``test_pd_mla.py`` starts one for MLA, paged);
    ``extra``: flags for both servers (SGLang's PD needs their page sizes equal)."""
    bootstrap = free_low_port(avoid=0)
    t0 = time.monotonic()
    log = os.path.join(tmp_path_factory.mktemp("pd-router"), "router.log")
    # one answer per request (smg would retry a failed one on a new room) and no circuit
    # breaker: the tests fail requests on purpose and read each failure's own answer
    prefill, decode, router = start_trio(
        launch_server, [*prefill_args(model_path, bootstrap, POOL), *extra],
        [*decode_args(model_path, DECODE_DP, DECODE_POOL), *extra], bootstrap, log,
        prefill_env=PREFILL_ENV, decode_env=decode_env,
        router_extra=("--disable-retries", "--disable-circuit-breaker"),
    )  # fmt: skip
    print(f"PD trio up in {time.monotonic() - t0:.0f} s")
    try:
        yield prefill, decode, router
    finally:
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


def test_a_prompt_larger_than_one_decode_rank_lands_in_its_shards(trio, tiny_model_path):
    """Issue 24 (items 2, 3): a prompt larger than one decode rank's SGLang pool lands straight
    in its shards on 3+ decode ranks (each holder receives only its range from the prefill
    server), the output equals HF, no rank's used KV ever exceeds its pool, and no shard move
    runs after landing."""
    lands_in_shards(trio, tiny_model_path, prompts(seed=24, count=1, lengths=(LONG,))[0])


def test_a_prompt_of_most_of_the_decode_clusters_kv_lands_in_its_shards(trio, tiny_model_path):
    """Item 3, up to the whole decode cluster's KV: a prompt of 85% of four decode pools."""
    lands_in_shards(trio, tiny_model_path, prompts(seed=27, count=1, lengths=(MOST,))[0])


def lands_in_shards(trio, model_path: str, ids: list[int]) -> None:
    """Serve ``ids`` (longer than two decode pools) through the router and check where it
    landed, its output against HF's, the decode ranks' sampled usage and the logs."""
    prefill, decode, router = trio
    pools = {x["dp_rank"]: x["max_total_num_tokens"] for x in decode.get("/v1/loads")["loads"]}
    assert len(ids) > 2 * max(pools.values()), pools
    before = {}
    for server in (prefill, decode):
        with open(server.log_path, errors="replace") as f:
            before[server] = len(f.read())
    with KvUsageSampler(decode, DECODE_DP) as s:
        out = router.post("/generate", {"input_ids": ids, "sampling_params": {
            "max_new_tokens": NEW, "temperature": 0, "ignore_eos": True}}, timeout=600)  # fmt: skip
    assert out["output_ids"] == hf_greedy(model_path, ids, NEW)
    dcp = out["meta_info"]["dcp"]  # where its KV is (the decode server's meta_info)
    assert len({r for r, *_ in dcp["shards"]}) >= 3 and dcp["shards"][-1][0] == dcp["home_rank"]
    with open(decode.log_path, errors="replace") as f:
        log = f.read()[before[decode]:]
    with open(prefill.log_path, errors="replace") as f:
        plog = f.read()[before[prefill]:]
    sent = re.findall(r"PD prefill sends (\S+) (\d+) of (\d+) positions", plog)
    assert len({s for s, *_ in sent}) >= 3, f"the prefill did not send ranges to 3 ranks: {sent}"
    holders = set(re.findall(r"sglang_dcp: PD landing: \S+ tokens .* on rank (\d+)", log))
    assert len(holders) >= 2, f"the prompt landed on holders {holders} only:\n{log[-3000:]}"
    assert s.most_ranks >= 3, f"KV was never on 3 decode ranks at once ({s.most_ranks})"
    print(f"landed as {dcp['shards']}; most used KV per decode rank {s.peak}, pools {pools}")
    assert all(p <= pools[r] for r, p in enumerate(s.peak)), f"over a pool {pools}: {s.peak}"
    for moved in ("sglang_dcp: shipped tokens", "sglang_dcp: migrated tokens", "shard move"):
        assert moved not in log, f"{moved!r} after landing:\n{log[-3000:]}"
    ids = PROMPTS[0]  # and a short one after it
    out = router.post("/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}})  # fmt: skip
    assert out["output_ids"] == hf_greedy(model_path, ids, 4)


def test_a_failed_transfer_to_one_holder_fails_the_request_and_frees_every_rank(
    trio, tiny_model_path
):
    """Item 4 (fault switch): the prefill server's transfer to the first holder fails; the
    request ends with a server error naming the failure, every rank of both servers frees its
    KV, and the next requests are served."""
    prefill, decode, router = trio
    ids = prompts(seed=25, count=1, lengths=(FAIL_LEN,))[0]
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": NEW, "temperature": 0}}
    try:
        out = router.post("/generate", body, timeout=600)
        code, text = 200, str(out.get("meta_info", {}).get("finish_reason"))
    except urllib.error.HTTPError as e:
        code, text = e.code, e.read().decode(errors="replace")
    print(f"the failed landing answered {code}: {text[:300]}")
    assert code >= 500 and "fail" in text.lower(), (code, text)
    assert _wait_drained(prefill, decode) == [0] * (1 + DECODE_DP), "KV left after the failure"
    time.sleep(3)  # the prefill's probe readmits the holder's session (interval 1 s)
    for ids, n in ((PROMPTS[1], 4), (prompts(seed=24, count=1, lengths=(LONG,))[0], 4)):
        out = router.post("/generate", {"input_ids": ids, "sampling_params": {
            "max_new_tokens": n, "temperature": 0, "ignore_eos": True}}, timeout=600)  # fmt: skip
        assert out["output_ids"] == hf_greedy(tiny_model_path, ids, n)


def _wait_drained(*servers, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        used = [r["num_used_tokens"] for s in servers for r in s.get("/v1/loads")["loads"]]
        if not any(used) or time.monotonic() > deadline:
            return used
        time.sleep(1)


def _body(ids: list[int]) -> dict:
    return {"input_ids": ids, "sampling_params": {"max_new_tokens": NEW, "temperature": 0}}


def test_an_abort_mid_transfer_frees_every_rank_and_the_planners_books(trio, tiny_model_path):
    """Item 4: ``/abort_request`` to the decode server while the prompt's KV is in flight to
    its 3 ranks: the request ends with an error, every rank of both servers frees its KV, each
    decode rank's books (the planner's) equal what it holds, the next request is served."""
    prefill, decode, router = trio
    body = _body(prompts(seed=26, count=1, lengths=(DELAY_LEN,))[0])
    rid, t, out = mid_transfer(prefill, decode, lambda out: post(router, body, out))
    t0 = time.monotonic()
    req = urllib.request.Request(decode.url + "/abort_request",
                                 data=json.dumps({"rid": rid}).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    urllib.request.urlopen(req, timeout=30).close()
    t.join(timeout=120)
    print(f"the aborted request answered {out.get('code')}: {out.get('text', '')[:300]}")
    assert out.get("code", 0) >= 400 or "abort" in out.get("text", ""), out
    assert _wait_drained(prefill, decode) == [0] * (1 + DECODE_DP), "KV left after the abort"
    print(f"every rank back to 0 used KV tokens {time.monotonic() - t0:.1f} s after the abort")
    assert settled_books(decode) == [(0, 0, 0, 0)] * DECODE_DP
    ids = prompts(seed=24, count=1, lengths=(LONG,))[0]
    out = router.post("/generate", {"input_ids": ids, "sampling_params": {
        "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}}, timeout=600)  # fmt: skip
    assert out["output_ids"] == hf_greedy(tiny_model_path, ids, 4)


def test_a_client_going_away_mid_transfer_frees_every_rank(trio):
    """Item 4: the client closes its connection to the router while the prompt's KV is in
    flight: the router drops both servers' requests, each server aborts on the disconnect,
    every rank frees its KV and each decode rank's books equal what it holds."""
    prefill, decode, router = trio
    client = Disconnecting(router, _body(prompts(seed=29, count=1, lengths=(DELAY_LEN,))[0]))
    _, t, _ = mid_transfer(prefill, decode, client)
    t0 = time.monotonic()
    client.close()
    t.join(timeout=30)
    assert _wait_drained(prefill, decode) == [0] * (1 + DECODE_DP), "KV left after going away"
    print(f"every rank back to 0 used KV tokens {time.monotonic() - t0:.1f} s after it went")
    assert settled_books(decode) == [(0, 0, 0, 0)] * DECODE_DP


def test_a_holder_without_room_fails_the_request_at_once_with_the_reason(trio, tiny_model_path):
    """Item 4: a holder cannot allocate its range (fault switch): a 503 naming it, promptly,
    and every rank frees its KV."""
    prefill, decode, router = trio
    out: dict = {}
    t0 = time.monotonic()
    post(router, _body(prompts(seed=27, count=1, lengths=(NO_ROOM_LEN,))[0]), out)
    print(f"no room answered {out['code']} in {time.monotonic() - t0:.1f} s: {out['text'][:300]}")
    assert out["code"] >= 500, out
    assert re.search(r"could not allocate the \d+ KV slots", out["text"]), out
    assert _wait_drained(prefill, decode) == [0] * (1 + DECODE_DP), "KV left after no room"
    assert settled_books(decode) == [(0, 0, 0, 0)] * DECODE_DP


def test_every_rank_of_both_servers_back_to_zero(trio):
    prefill, decode, _ = trio
    used = _wait_drained(prefill, decode)
    assert used == [0] * (1 + DECODE_DP), used


def test_the_prefill_server_dying_mid_transfer_frees_every_decode_rank(trio, tiny_model_path):
    """Item 4, last (it restarts the prefill server): the prefill server is killed while a
    prompt's KV is in flight to 3 decode ranks: the request fails through the router, every
    decode rank (holders included) returns to 0 used KV tokens, the planner's books too, and
    the restarted prefill server serves the next requests."""
    prefill, decode, router = trio
    body = _body(prompts(seed=28, count=1, lengths=(DELAY_LEN,))[0])
    _, t, out = mid_transfer(prefill, decode, lambda out: post(router, body, out))
    t0 = time.monotonic()
    prefill.kill()
    t.join(timeout=120)
    print(f"the request answered {out.get('code')}: {out.get('text', '')[:300]}")
    assert out.get("code", 0) >= 500, out
    assert _wait_drained(decode, timeout=90) == [0] * DECODE_DP, "decode KV left"
    print(f"every decode rank back to 0 used KV tokens {time.monotonic() - t0:.1f} s after kill")
    assert settled_books(decode) == [(0, 0, 0, 0)] * DECODE_DP
    t0 = time.monotonic()
    prefill.start()
    print(f"prefill server restarted in {time.monotonic() - t0:.0f} s")
    for ids, n in ((PROMPTS[0], 4), (prompts(seed=24, count=1, lengths=(LONG,))[0], 4)):
        out = retry_post(router, {"input_ids": ids, "sampling_params": {
            "max_new_tokens": n, "temperature": 0, "ignore_eos": True}})  # fmt: skip
        assert out["output_ids"] == hf_greedy(tiny_model_path, ids, n)
    assert _wait_drained(prefill, decode) == [0] * (1 + DECODE_DP)
