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

from hf_reference import prompts
from test_prefill_shards import ARGS, ENV, PROMPT, RANKS, served_over_ranks

from sglang_dcp.testing.server import tiny_dp_args

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(launch_server, tiny_deepseek_path):
    return launch_server([*tiny_dp_args(tiny_deepseek_path, RANKS), *ARGS], env=ENV,
                         startup_timeout=900)  # fmt: skip


def test_mla_prompt_of_three_ranks_kv_is_served_and_equals_hf(server, tiny_deepseek_path):
    ids = prompts(seed=61, count=1, lengths=(PROMPT,))[0]
    log = served_over_ranks(server, tiny_deepseek_path, ids, "mla-long")
    assert re.search(r"shipped tokens \[\d+, \d+\) of mla-long", log)
