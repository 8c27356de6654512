"""``--demo`` with every other placement policy starts and serves: the presets the demo adds
(KV sharding, a planner budget) yield to the user's choice instead of refusing to start.

The obvious comparison a new user makes (``--demo --dcp-policy round_robin`` against the default)
once failed with an error about a flag the user never typed."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from hf_reference import hf_greedy

pytestmark = pytest.mark.e2e

IDS = [323, 312, 489, 454, 464]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


# One start per serving path the presets can lead to: a planner baseline policy that never shards
# (``round_robin`` serves through the same path in test_server_dcp.py), the uniform policy,
# SGLang's own dispatch (``--dcp-policy off`` resolves to the same launch as the typed
# ``--load-balance-method``: test/sglang/test_demo_presets.py), and the planner with a budget.
FLAGS = {
    "total_tokens": ["--dcp-policy", "total_tokens"],
    "uniform": ["--dcp-policy", "uniform"],
    "lb-round_robin": ["--load-balance-method", "round_robin"],
    "dcp-slo": ["--dcp-slo-tpot-ms", "50", "--dcp-split-rule", "auto"],
}


@pytest.fixture(scope="module")
def served(launch_server, cache):
    """Each policy's demo started, asked once and stopped, two at a time (one start leaves a
    third of the two cores idle; the first two launchers build the demo model at once into one
    cache, which ``demo_model_path`` must survive): name -> future of (output ids, load rows)."""
    def one(flags):
        srv = launch_server(["--demo", *flags], env={"SGLANG_DCP_CACHE_DIR": str(cache)})
        try:
            out = srv.post("/generate", {"input_ids": IDS, "sampling_params": {
                "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}})  # fmt: skip
            return out["output_ids"], len(srv.get("/v1/loads")["loads"])
        finally:
            srv.stop()

    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(one, flags) for name, flags in FLAGS.items()}


@pytest.mark.parametrize("name", FLAGS)
def test_demo_starts_and_serves_with_policy(served, cache, name):
    output_ids, load_rows = served[name].result()
    model = os.fspath(cache / "tiny-qwen3-moe-seed0")
    assert output_ids == hf_greedy(model, IDS, 4)
    assert load_rows == 4
