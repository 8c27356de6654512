"""End-to-end: KV sharding around a second inner backend, SGLang's own ``triton`` attention.

Sharding no longer rewrites ``--attention-backend``: unsplit rows run on the backend the user
chose, split rows' own part on our kernel inside the exchange. The other e2e tests serve with
``torch_native`` (SGLang's CPU backend); this one serves with ``triton``, which runs on CPU under
the Triton interpreter (``TRITON_INTERPRET=1``, slow: so 2 ranks, a small planner budget and a
prompt of a few hundred tokens). Greedy output equals HF with the home's shipped KV poisoned,
for a split and an unsplit request.
"""

from __future__ import annotations

import pytest

from hf_reference import hf_greedy, prompts

from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e

RANKS, KV_PER_RANK, MAX_NEW = 2, 192, 4
ARGS = [
    "--attention-backend", "triton", "--disable-radix-cache",
    "--dcp-kv-capacity", str(KV_PER_RANK), "--dcp-min-shard-tokens", "32",
    "--watchdog-timeout", "1800",
]  # fmt: skip
ENV = {"TRITON_INTERPRET": "1", "SGLANG_DCP_POISON_MOVED": "1"}


@pytest.fixture(scope="module")
def server(launch_server, tiny_model_path):
    return launch_server([*tiny_dp_args(tiny_model_path, RANKS), *ARGS], env=ENV,
                         startup_timeout=1200)  # fmt: skip


def test_split_and_unsplit_requests_on_sglangs_triton_backend_match_hf(server, tiny_model_path):
    for ids in prompts(seed=5, count=2, lengths=(24, 300)):
        out = server.post("/generate", {
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True},
        }, timeout=1500)  # fmt: skip
        assert out["output_ids"] == hf_greedy(tiny_model_path, ids, MAX_NEW), len(ids)
        degree = out["meta_info"]["dcp"]["degree"]
        assert degree == (1 if len(ids) < KV_PER_RANK else RANKS), (len(ids), degree)
    with open(server.log_path, errors="replace") as f:
        log = f.read()
    assert "attention runs through the DCP exchange" in log and "triton" in log
