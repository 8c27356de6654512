"""End-to-end: prefill into shards with an MLA model (the tiny DeepSeek-V3), pools capped to
about a third of the prompt.

The same setting as ``test_prefill_shards.py`` (whose helpers this reuses) with SGLang's
absorbed MLA path: later chunks' query rows (``[H, kv_lora_rank + rope]``) reach the ranks
holding earlier chunks' latent KV through the exchange, non-causally, and are merged with the
home's causal part. The home's copy of every shipped piece is NaN
(``SGLANG_DCP_POISON_MOVED=1``), so the output can only equal HF's if every chunk read the
remote part of its prefix through the exchange.
"""

from __future__ import annotations

import re

import pytest

from hf_reference import hf_greedy, prompts
from test_prefill_shards import (
    ARGS, ENV, MAX_NEW, POOL, PROMPT, RANKS, Sampler, generate, wait_drained,
)  # fmt: skip

from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(launch_server, tiny_deepseek_path):
    return launch_server([*tiny_dp_args(tiny_deepseek_path, RANKS), *ARGS], env=ENV,
                         startup_timeout=900)  # fmt: skip


def test_mla_prompt_of_three_ranks_kv_is_served_and_equals_hf(server, tiny_deepseek_path):
    ids = prompts(seed=61, count=1, lengths=(PROMPT,))[0]
    with Sampler(server) as s:
        out = generate(server, ids, "mla-long", max_new=MAX_NEW)
    assert out["output_ids"] == hf_greedy(tiny_deepseek_path, ids, MAX_NEW)
    dcp = out["meta_info"]["dcp"]
    assert dcp["degree"] >= 3 and len({r for r, *_ in dcp["shards"]}) >= 3, dcp
    assert all(p <= POOL for p in s.peak), f"a rank went over its {POOL}-token pool: {s.peak}"
    assert s.guest_ranks >= 3, f"KV was never on 3 ranks at once: {s.guest_ranks}"
    with open(server.log_path, errors="replace") as f:
        log = f.read()
    assert "reads poisoned KV" not in log and "is NaN" not in log
    assert re.search(r"shipped tokens \[\d+, \d+\) of mla-long", log)
    wait_drained(server)
