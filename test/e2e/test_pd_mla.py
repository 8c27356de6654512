"""PD-disaggregated serving of an MLA model (the tiny DeepSeek-V3) on paged pools
(``--page-size 16`` on both servers: SGLang's PD refuses unequal page sizes): the landing
test of ``test_pd.py`` (whose trio and checks this reuses) on the paged latent KV pool.

A prompt larger than one decode rank's SGLang pool lands straight in its shards on 3+ decode
ranks: each holder allocates whole pages for its ranges of the 576-wide latent rows and
registers their page indices, and the prefill server sends each only its pages
(``sglang/pd_landing.py``, the prefill log's lists count pages); the home's admission counts its
share only (``sglang/pd_admission.py``). Greedy output equals HF, no rank's used KV exceeds
its pool, no shard move runs, and every rank of both servers is back to 0 after. One more trio
for the suite (MLA and paged): only the landing test runs on it.
"""

from __future__ import annotations

import re

import pytest
from hf_reference import prompts
from test_pd import DECODE_DP, LONG, _wait_drained, lands_in_shards, pd_trio

pytestmark = pytest.mark.e2e
PAGE = 16  # tokens per KV page on both servers; the planner's ranges are whole pages (64)


@pytest.fixture(scope="module")
def trio(launch_server, tiny_deepseek_path, tmp_path_factory):
    with pd_trio(launch_server, tiny_deepseek_path, tmp_path_factory, {},
                 ("--page-size", str(PAGE))) as started:  # fmt: skip
        yield started


def test_mla_paged_prompt_larger_than_one_decode_rank_lands_in_its_shards(trio,
                                                                         tiny_deepseek_path):
    lands_in_shards(trio, tiny_deepseek_path, prompts(seed=42, count=1, lengths=(LONG,))[0])
    prefill, decode, _ = trio
    with open(prefill.log_path, errors="replace") as f:  # the lists count pages, not tokens
        sent = re.findall(r"PD prefill sends \S+ \d+ of (\d+) positions", f.read())
    sent = [int(m) for m in sent]
    assert sent and max(sent) <= -(-LONG // PAGE), sent
    assert _wait_drained(prefill, decode) == [0] * (1 + DECODE_DP)
