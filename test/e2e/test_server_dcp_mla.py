"""End-to-end: an MLA model (the DeepSeek-V3 architecture) with KV spread over DP ranks.

The tiny DeepSeek-V3 (``sglang_dcp.tiny_deepseek``: MLA with q/KV LoRA ranks, YaRN
rope, a dense first layer, grouped top-k MoE with a shared expert) served by ``launch_server
--demo --demo-model tiny-deepseek-v3`` (4 CPU ranks, DP attention, KV sharding) with the planner
budget and checks of ``test_server_dcp.py`` (whose helpers this reuses): the
exchange carries SGLang's absorbed queries ``[H, kv_lora_rank + rope]`` and latent partials
``[H, kv_lora_rank]``; ``SGLANG_DCP_POISON_MOVED=1`` makes the home's copy of every shipped
latent shard NaN, so an output can only be right if attention read the guest shards.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from hf_reference import hf_greedy, prompts
from test_server_dcp import (
    ENV, LONG, RANKS, SHARD_ARGS, SHORT, abort_mid_decode, generate, shipped, wait_drained,
)  # fmt: skip

from sglang_dcp.testing.server import tiny_dp_args
from sglang_dcp.tiny_model import checkpoint_digest

pytestmark = pytest.mark.e2e


# Each rank's pool in tokens (tiny_dp_args and the demo size it so, not as a share of free host
# memory, which other servers' loading would eat into): 16k tokens x 576 B (3 layers x 48 fp32
# latent) per rank.
POOL = ["--max-total-tokens", "16384"]


@pytest.fixture(scope="module")
def servers(launch_server, tiny_deepseek_path, tmp_path_factory):
    """(the DCP server, the same model with the round-robin baseline), started together. The DCP
    one is ``--demo --demo-model tiny-deepseek-v3`` (4 ranks, sharding on) with this file's
    planner budget; the demo builds its model in the cache folder, byte-identical to the
    fixture's (checked)."""
    cache = tmp_path_factory.mktemp("cache")
    demo = ["--demo", "--demo-model", "tiny-deepseek-v3", *SHARD_ARGS, *POOL]
    rr_args = [*tiny_dp_args(tiny_deepseek_path, RANKS), *POOL]
    with ThreadPoolExecutor(max_workers=2) as pool:
        env = {**ENV, "SGLANG_DCP_CACHE_DIR": str(cache)}
        dcp = pool.submit(launch_server, demo, env=env, startup_timeout=900)
        rr = pool.submit(
            launch_server, [*rr_args, "--dcp-policy", "round_robin"], startup_timeout=900
        )
        dcp, rr = dcp.result(), rr.result()
    built = checkpoint_digest(str(cache / "tiny-deepseek-v3-seed0"))
    assert built == checkpoint_digest(tiny_deepseek_path)
    assert len(dcp.get("/v1/loads")["loads"]) == RANKS
    return dcp, rr


@pytest.fixture(scope="module")
def hf(tiny_deepseek_path):
    cache = {}

    def greedy(ids, max_new=8):
        key = (tuple(ids), max_new)
        if key not in cache:
            cache[key] = hf_greedy(tiny_deepseek_path, ids, max_new)
        return cache[key]

    return greedy


def test_mla_long_prompts_spread_over_ranks_match_hf_and_round_robin(servers, hf):
    server, rr_server = servers
    batch = prompts(seed=3, count=5, lengths=SHORT + LONG)
    with ThreadPoolExecutor(max_workers=2) as pool:
        rr = pool.submit(lambda: [generate(rr_server, ids)["output_ids"] for ids in batch])
        for i, ids in enumerate(batch):
            rid = f"mla-spread-{i}"
            out = generate(server, ids, rid)
            assert out["output_ids"] == hf(ids), f"prompt of {len(ids)} tokens"
            dcp = out["meta_info"]["dcp"]
            if len(ids) in SHORT:
                assert dcp["degree"] == 1 and not shipped(server, rid)
            else:
                assert 2 <= dcp["degree"] <= RANKS, dcp
                moves = shipped(server, rid)
                assert {dst for *_, dst in moves} == set(dcp["shard_ranks"][:-1])
        assert rr.result() == [hf(ids) for ids in batch]
    wait_drained(server)


@pytest.mark.timeout(900)
def test_mla_32_concurrent_mixed_requests_complete(servers, hf):
    server, _ = servers
    batch = prompts(seed=11, count=32, lengths=(20, 90, 300, 40, 700, 20, 90, 40))
    with ThreadPoolExecutor(max_workers=32) as pool:
        outs = list(pool.map(lambda ids: generate(server, ids, timeout=900), batch))
    for ids, out in zip(batch, outs):
        assert out["output_ids"] == hf(ids), f"prompt of {len(ids)} tokens: {out['meta_info']}"
    assert max(o["meta_info"]["dcp"]["degree"] for o in outs) > 1
    wait_drained(server)


def test_mla_abort_mid_decode_frees_every_ranks_kv(servers):
    server, _ = servers
    abort_mid_decode(server, prompts(seed=13, count=1, lengths=(1300,))[0], "mla-abort-long")


