"""End-to-end: SGLang's radix cache stays on with KV sharding (issue 26).

One 4-rank CPU server with sharding and the radix cache on (no ``--disable-radix-cache``), a
small planner budget per rank so long prompts are split, and ``SGLANG_DCP_POISON_MOVED=1``
(the home's copy of every shipped shard is NaN, so a split request's output is only right if
nothing of it was served from, or left in, its home's tree). Unsplit requests hit the cache as
in plain SGLang (a repeat reports ``cached_tokens = prompt - 1``, SGLang's match limit) and the
planner's prefix directory sends a prompt extending an earlier one to the rank whose tree holds
it; split requests stay equal to HF and leave no KV behind, also when their shards must evict
cached prefixes on small pools (``--max-total-tokens``, prefill into shards by chunks). A
finished split request leaves its ranges cached where they lie, and the next turn of its session
is placed on them and prefills only its new tokens (parts 2-4); the controller's piece directory
equals what the ranks hold after aborts and failed moves. One server for the module.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hf_reference import hf_greedy, prompts
from test_server_dcp import loads, wait_drained

from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e

RANKS = 4
POOL = 1024  # SGLang's pool per rank: two finished 440-token prompts fill most of it
ARGS = ["--dcp-kv-capacity", "512", "--dcp-min-shard-tokens", "64",
        "--max-total-tokens", str(POOL), "--chunked-prefill-size", "512"]  # fmt: skip
ENV = {"SGLANG_DCP_POISON_MOVED": "1", "SGLANG_DCP_PLANNER_LOG": "1",
       "SGLANG_DCP_INJECT_MOVE_FAILURE_RID": "fault-@128"}  # only rids "fault-..." fail
MAX_NEW = 8


@pytest.fixture(scope="module")
def server(launch_server, tiny_model_path):
    return launch_server([*tiny_dp_args(tiny_model_path, RANKS), *ARGS], env=ENV,
                         startup_timeout=900)  # fmt: skip


def generate(server, ids, rid, max_new=MAX_NEW, home=None):
    payload = {"rid": rid, "input_ids": ids,
               "sampling_params": {"max_new_tokens": max_new, "temperature": 0,
                                   "ignore_eos": True}}  # fmt: skip
    if home is not None:
        payload["routed_dp_rank"] = home
    return server.post("/generate", payload, timeout=600)


def log_of(server) -> str:
    with open(server.log_path, errors="replace") as f:
        return f.read()


def test_short_requests_hit_the_cache_and_the_next_turn_goes_where_it_lies(server,
                                                                           tiny_model_path):
    ids = prompts(seed=71, count=1, lengths=(300,))[0]
    first = generate(server, ids, "turn-1")
    assert first["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)
    assert first["meta_info"]["dcp"]["degree"] == 1
    home = first["meta_info"]["dp_rank"]
    again = generate(server, ids, "turn-1-again")
    assert again["output_ids"] == first["output_ids"]
    assert again["meta_info"]["dp_rank"] == home, "the directory did not find the prefix"
    assert again["meta_info"]["cached_tokens"] == len(ids) - 1  # as plain SGLang reports it
    # the next turn: the prompt, its output and new tokens
    turn2 = ids + first["output_ids"] + prompts(seed=72, count=1, lengths=(60,))[0]
    second = generate(server, turn2, "turn-2")
    assert second["output_ids"] == hf_greedy(tiny_model_path, turn2, MAX_NEW)
    assert second["meta_info"]["dp_rank"] == home
    assert second["meta_info"]["cached_tokens"] >= len(ids)
    assert "planner prefix rid=turn-2 home=%d" % home in log_of(server)
    wait_drained(server)


def test_split_requests_stay_out_of_the_tree_and_equal_hf(server, tiny_model_path):
    long_ids = prompts(seed=73, count=1, lengths=(1300,))[0]
    want = hf_greedy(tiny_model_path, long_ids, MAX_NEW)
    out = generate(server, long_ids, "split-a")
    assert out["output_ids"] == want
    assert out["meta_info"]["dcp"]["degree"] > 1
    assert out["meta_info"]["cached_tokens"] == 0, "a split request matched its home's tree"
    # the same prompt again: only split-a's pieces (never its home's tree) can serve it
    out = generate(server, long_ids, "split-b")
    assert out["output_ids"] == want
    assert out["meta_info"]["cached_tokens"] < len(long_ids)
    # a short prompt sharing the split one's first tokens is served correctly
    head = long_ids[:200]
    out = generate(server, head, "split-head")
    assert out["output_ids"] == hf_greedy(tiny_model_path, head, MAX_NEW)
    log = log_of(server)
    assert "reads poisoned KV" not in log and "is NaN" not in log
    wait_drained(server)


def test_concurrent_mix_with_shared_prefixes_equals_hf(server, tiny_model_path):
    base = prompts(seed=74, count=1, lengths=(150,))[0]
    tails = prompts(seed=75, count=6, lengths=(20, 40, 80))
    reqs = [(f"mix-{i}", base + t) for i, t in enumerate(tails)]
    reqs.append(("mix-long", prompts(seed=76, count=1, lengths=(900,))[0]))
    with ThreadPoolExecutor(len(reqs)) as pool:
        outs = dict(zip([r for r, _ in reqs],
                        pool.map(lambda x: generate(server, x[1], x[0]), reqs)))  # fmt: skip
    for rid, ids in reqs:
        assert outs[rid]["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW), rid
    assert outs["mix-long"]["meta_info"]["dcp"]["degree"] > 1
    # (requests prefilled in one batch share nothing; the next one finds the prefix)
    after = base + prompts(seed=77, count=1, lengths=(30,))[0]
    out = generate(server, after, "mix-after")
    assert out["output_ids"] == hf_greedy(tiny_model_path, after, MAX_NEW)
    assert out["meta_info"]["cached_tokens"] >= len(base)
    wait_drained(server)


def test_guest_shards_evict_cached_prefixes_under_memory_pressure(server, tiny_model_path):
    # every rank's tree holds two finished prompts (evictable), most of its pool: a split
    # request's shards must evict them to land on the guests
    for i, ids in enumerate(prompts(seed=78, count=2 * RANKS, lengths=(440,))):
        generate(server, ids, f"fill-{i}", home=i % RANKS)
    ids = prompts(seed=79, count=1, lengths=(1300,))[0]
    out = generate(server, ids, "pressure")
    assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)
    dcp = out["meta_info"]["dcp"]
    assert {r for r, *_ in dcp["shards"]} - {dcp["home_rank"]}, dcp  # the shards left home
    failed = [ln for ln in log_of(server).splitlines() if "failed" in ln and "pressure" in ln]
    assert not failed, failed[:3]
    wait_drained(server)


def assert_pieces_agree(server, timeout=30.0):
    """The controller's piece directory equals what every rank's piece cache holds."""
    deadline = time.monotonic() + timeout
    while True:
        d = {r: x["dcp"] for r, x in loads(server).items()}
        have = {r: x["piece_kv_tokens"] for r, x in d.items()}
        books = {r: x["planner_piece_kv_tokens"] for r, x in d.items()}
        if have == books:
            return have
        assert time.monotonic() < deadline, f"pieces held {have}, directory {books}"
        time.sleep(0.5)


def prefilled(server, since: int) -> tuple[int, list[int]]:
    """(new tokens, cached tokens per batch) of the prefill batches SGLang logged after
    ``since`` characters of the server log."""
    delta = log_of(server)[since:]
    new = [int(x) for x in re.findall(r"Prefill batch.*?#new-token: (\d+)", delta)]
    hit = [int(x) for x in re.findall(r"Prefill batch.*?#cached-token: (\d+)", delta)]
    return sum(new), hit


def test_the_next_turn_of_a_split_session_prefills_only_its_new_tokens(server, tiny_model_path):
    ids = prompts(seed=81, count=1, lengths=(1300,))[0]
    first = generate(server, ids, "sess-1")
    assert first["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)
    assert first["meta_info"]["dcp"]["degree"] > 1
    held = assert_pieces_agree(server)
    assert sum(held.values()) >= len(ids) - 64, held  # its ranges stayed where they lay
    turn2 = ids + first["output_ids"] + prompts(seed=82, count=1, lengths=(200,))[0]
    since = len(log_of(server))
    second = generate(server, turn2, "sess-2")
    assert second["output_ids"] == hf_greedy(tiny_model_path, turn2, MAX_NEW)
    cached = second["meta_info"]["cached_tokens"]
    assert cached >= len(ids), second["meta_info"]
    dcp1, dcp2 = first["meta_info"]["dcp"], second["meta_info"]["dcp"]
    assert dcp2["home_rank"] == dcp1["home_rank"] and dcp2["degree"] == dcp1["degree"], dcp2
    assert dcp2["shards"][:-1] == dcp1["shards"][:-1], (dcp1, dcp2)  # where the pieces lay
    assert "planner pieces rid=sess-2" in log_of(server)
    new, hits = prefilled(server, since)
    assert new == len(turn2) - cached and cached in hits, (new, hits, cached)
    log = log_of(server)
    assert "reads poisoned KV" not in log and "is NaN" not in log
    wait_drained(server)
    assert_pieces_agree(server)


def test_evicted_pieces_are_recomputed_and_faults_leave_the_directory_exact(server,
                                                                          tiny_model_path):
    ids = prompts(seed=83, count=1, lengths=(1300,))[0]
    first = generate(server, ids, "evict-1")
    evicted0 = sum(x["dcp"]["pieces_evicted"] for x in loads(server).values())
    # other sessions' long prompts fill every rank's pool: older pieces are evicted (LRU)
    for i, fill in enumerate(prompts(seed=84, count=3, lengths=(1300,))):
        assert generate(server, fill, f"evict-fill-{i}")["meta_info"]["dcp"]["degree"] > 1
    assert sum(x["dcp"]["pieces_evicted"] for x in loads(server).values()) > evicted0
    turn2 = ids + first["output_ids"] + prompts(seed=85, count=1, lengths=(200,))[0]
    out = generate(server, turn2, "evict-2")
    assert out["output_ids"] == hf_greedy(tiny_model_path, turn2, MAX_NEW)
    assert out["meta_info"]["cached_tokens"] < len(ids), "its pieces were not evicted"
    # a split request whose moves fail mid-prefill (aborted, HTTP 503), then the books
    fault = prompts(seed=86, count=1, lengths=(1300,))[0]
    try:
        generate(server, fault, "fault-1")
    except Exception:  # noqa: BLE001 - the injected failure aborts it
        pass
    wait_drained(server)
    assert_pieces_agree(server)


def test_the_first_split_turn_of_a_session_reuses_its_home_tree(server, tiny_model_path):
    # turn 1 fits one rank's planner budget (512): unsplit, its KV goes into its home's tree
    ids = prompts(seed=87, count=1, lengths=(300,))[0]
    first = generate(server, ids, "tree-1")
    assert first["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)
    assert first["meta_info"]["dcp"]["degree"] == 1
    home = first["meta_info"]["dp_rank"]
    # turn 2 does not: split, its home is the tree's rank, which serves the prefix
    turn2 = ids + first["output_ids"] + prompts(seed=88, count=1, lengths=(300,))[0]
    since = len(log_of(server))
    second = generate(server, turn2, "tree-2")
    assert second["output_ids"] == hf_greedy(tiny_model_path, turn2, MAX_NEW)
    dcp = second["meta_info"]["dcp"]
    assert dcp["degree"] >= 2 and dcp["home_rank"] == home, dcp
    assert len({r for r, *_ in dcp["shards"]}) >= 2, dcp
    cached = second["meta_info"]["cached_tokens"]
    assert cached >= len(ids), second["meta_info"]
    assert "planner prefix rid=tree-2 home=%d" % home in log_of(server)
    new, hits = prefilled(server, since)
    assert new == len(turn2) - cached and cached in hits, (new, hits, cached)
    log = log_of(server)
    assert "reads poisoned KV" not in log and "is NaN" not in log
    wait_drained(server)  # the tree's lock was released, the request's own slots freed
    assert_pieces_agree(server)
    # the tree's copy stayed valid (never freed nor poisoned): turn 1 again hits it, = HF
    again = generate(server, ids, "tree-1-again", home=home)
    assert again["output_ids"] == first["output_ids"]
    assert again["meta_info"]["cached_tokens"] == len(ids) - 1
    wait_drained(server)
