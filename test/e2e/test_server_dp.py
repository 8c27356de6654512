"""End-to-end: the real SGLang server with DP attention (2 DP ranks) on CPU, via our launcher
(the ``dp2_server`` shared with ``test_server_dp_observe.py`` and ``test_server_dp_planner.py``,
which stops it)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from hf_reference import hf_greedy, prompts

pytestmark = pytest.mark.e2e

MAX_NEW = 8


@pytest.fixture(scope="module")
def server(dp2_server):
    return dp2_server


def _generate(server, input_ids, **extra):
    payload = {
        "input_ids": input_ids,
        "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True},
        **extra,
    }
    return server.post("/generate", payload)


def test_greedy_matches_hf(server, tiny_model_path):
    for ids in prompts(seed=1, count=3, lengths=(5, 40, 300)):
        out = _generate(server, ids)
        assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)


def test_text_prompt_matches_hf(server, tiny_model_path):
    from transformers import AutoTokenizer

    text = "The quick brown fox jumps over the lazy dog."
    ids = AutoTokenizer.from_pretrained(tiny_model_path)(text)["input_ids"]
    out = server.post(
        "/generate",
        {"text": text, "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True}},
    )
    assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)


def test_concurrent_requests_use_both_ranks(server, tiny_model_path):
    batch = prompts(seed=2, count=8, lengths=(7, 19, 64, 3))
    with ThreadPoolExecutor(max_workers=8) as pool:
        outs = list(pool.map(lambda ids: _generate(server, ids), batch))
    assert {o["meta_info"]["dp_rank"] for o in outs} == {0, 1}
    for ids, o in zip(batch, outs):
        assert o["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)


@pytest.mark.parametrize("rank", [0, 1])
def test_routed_dp_rank_pins_the_rank(server, tiny_model_path, rank):
    ids = prompts(seed=3 + rank, count=1, lengths=(11,))[0]
    for _ in range(2):
        out = _generate(server, ids, routed_dp_rank=rank)
        assert out["meta_info"]["dp_rank"] == rank
        assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW)


def test_v1_loads_reports_every_rank(server):
    loads = server.get("/v1/loads")
    assert sorted(entry["dp_rank"] for entry in loads["loads"]) == [0, 1]
    for entry in loads["loads"]:
        assert entry["max_total_num_tokens"] > 0
        assert entry["num_running_reqs"] >= 0


def test_every_process_is_forked_from_one_preloaded_fork_server(server):
    """On CPU (``fast_start``): the DP controller, the detokenizer and both schedulers are
    children of one fork server, itself the launcher's child; no second server was started."""
    import psutil

    launcher = psutil.Process(server.proc.pid)
    titles = {p.pid: " ".join(p.cmdline()) for p in launcher.children(recursive=True)}
    servers = [pid for pid, cmd in titles.items() if "multiprocessing.forkserver" in cmd]
    assert len(servers) == 1, titles
    assert psutil.Process(servers[0]).ppid() == launcher.pid
    named = {pid: cmd for pid, cmd in titles.items() if cmd.startswith("sglang::")}
    kinds = sorted(cmd.split()[0].split("_")[0] for cmd in named.values())
    assert kinds == ["sglang::data", "sglang::detokenizer", "sglang::scheduler",
                     "sglang::scheduler"], named  # fmt: skip
    assert all(psutil.Process(pid).ppid() == servers[0] for pid in named), titles
