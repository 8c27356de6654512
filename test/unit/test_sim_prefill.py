"""The simulator's prefill model: prompts longer than a rank pay the exchange of prefill into
shards (``sim/prefill.py``); every other prompt's prefill time is unchanged."""

import numpy as np
import pytest

from sglang_dcp.planner import load_profile
from sglang_dcp.sim.cost import StepModel
from sglang_dcp.sim.prefill import shard_prefill_exchange_us

P = load_profile("qwen3-235b-h200")
ITEM, FIXED = P.exchange_us_per_item, P.exchange_us_fixed


def test_a_prompt_that_fits_a_rank_pays_nothing():
    assert shard_prefill_exchange_us(P, 1000, kv_capacity=1000, chunk=64) == 0.0


def test_two_shards_rows_after_the_first_chunk_go_to_the_first_shard():
    # 2 x 1024 tokens on ranks of 1024, chunks of 256: shard 0 lives on another rank (the home
    # keeps the last), so chunks 1..7 (rows 256..2047) send their rows to it
    got = shard_prefill_exchange_us(P, 2048, kv_capacity=1024, chunk=256)
    assert got == pytest.approx(1792 * ITEM + 7 * FIXED)


def test_three_shards_count_the_ranks_before_each_chunk():
    # 2400 tokens on ranks of 1000: d = 3, shards of 800; chunks of 400 start at 0, 400, ...
    # ranks holding tokens before the start: 0, 1, 1, 2, 2, 2 (capped at d - 1 = 2)
    got = shard_prefill_exchange_us(P, 2400, kv_capacity=1000, chunk=400)
    rows = 400 * (1 + 1 + 2 + 2 + 2)
    assert got == pytest.approx(rows * ITEM + 5 * FIXED)


def test_smaller_chunks_start_sending_sooner_and_pay_more_latency():
    a = shard_prefill_exchange_us(P, 4096, kv_capacity=2048, chunk=1024)  # 3 chunks, 3072 rows
    b = shard_prefill_exchange_us(P, 4096, kv_capacity=2048, chunk=512)  # 7 chunks, 3584 rows
    assert b - a == pytest.approx(512 * ITEM + 4 * FIXED)


def test_step_model_prefill_changes_only_prompts_longer_than_a_rank():
    lens = np.array([10, 5000, 390_000, 400_000, 900_000])
    plain = StepModel(P, 8).prefill_ms(lens)
    assert plain == pytest.approx([P.prefill_us(int(x)) * 1e-3 for x in lens])
    sharded = StepModel(P, 8, kv_capacity=390_016).prefill_ms(lens)
    assert sharded[:3] == pytest.approx(plain[:3])
    extra = [shard_prefill_exchange_us(P, int(x), kv_capacity=390_016) * 1e-3 for x in lens[3:]]
    assert sharded[3:] == pytest.approx(plain[3:] + extra) and all(e > 0 for e in extra)


def test_bad_arguments():
    with pytest.raises(ValueError, match="chunk"):
        shard_prefill_exchange_us(P, 10, kv_capacity=4, chunk=0)
