"""Bytes per guest item per layer (``exchange/wire.py``), against the exchange's own buffers and
the arithmetic of every shipped cost profile."""

import json
import re

import pytest

from sglang_dcp.exchange.wire import gqa_item_bytes, item_bytes, mla_item_bytes
from sglang_dcp.planner.profile import PROFILE_DIR, available_profiles

# profile -> (query heads, q/K width, o/V width) of the model it prices, bf16 activations
GEOMETRY = {
    "deepseek-v3-h200": (128, 576, 512),
    "deepseek-v3-h200-node8": (128, 576, 512),
    "kimi-k2-h200-ep32": (64, 576, 512),
    "qwen3-235b-h200": (64, 128, 128),
    # issue 29 family profiles (the sparse layers' candidate exchange is in attention_layers)
    **{f"{m}-{d}": g for m, g in (("deepseek-v32-h200", (128, 576, 512)),
                                  ("deepseek-v32-fp8kv-h200", (128, 576, 512)),
                                  ("glm5-h200", (64, 576, 512)),
                                  ("deepseek-v4-flash-h200", (64, 512, 512)),
                                  ("qwen35-397b-h200", (32, 256, 256)),
                                  ("minimax-m2-h200", (48, 128, 128)))
       for d in ("node8", "ep16")},
    "deepseek-v4-pro-h200-ep16": (128, 512, 512),
}
# "<bytes> B / <rate> GB/s ... = <per layer> us/layer x <layers> = <total>"
ARITH = re.compile(r"([\d,]+) B (?:\([^)]*\) )?/ ([\d.]+) GB/s.*?x (\d+) = ([\d.]+)")


def test_mla_vs_gqa():
    assert mla_item_bytes(128) == 128 * (576 * 2 + 512 * 2 + 4) == 279_040  # DeepSeek-V3
    assert mla_item_bytes(64) == 139_520  # Kimi-K2
    assert gqa_item_bytes(64, 128) == 33_024  # Qwen3-235B
    # the tiny DeepSeek-V3 of the tests: 4 heads x (48 out + 32 back), float32
    assert mla_item_bytes(4, kv_lora_rank=32, qk_rope_head_dim=16, elem_bytes=4) == 1_296


def test_the_exchange_buffers_move_exactly_that_per_item():
    torch = pytest.importorskip("torch")
    from sglang_dcp.exchange.buffers import ExchangeShape

    s = ExchangeShape(num_ranks=2, max_local=1, capacity=1, num_q_heads=128, head_dim=576,
                      v_head_dim=512, max_kv_slots=1, dtype=torch.bfloat16)  # fmt: skip
    assert s.q_bytes + s.o_bytes + s.lse_bytes == mla_item_bytes(128)


@pytest.mark.parametrize("name", sorted(GEOMETRY))
def test_each_profile_prices_an_item_with_these_bytes(name):
    assert set(GEOMETRY) == set(available_profiles())
    with open(PROFILE_DIR / f"{name}.json") as f:
        prof = json.load(f)
    heads, d, dv = GEOMETRY[name]
    want = item_bytes(num_q_heads=heads, head_dim=d, v_head_dim=dv)
    arithmetic = prof["provenance"]["arithmetic"]
    costs = prof["costs_us"]
    for key in ("exchange_us_per_item", "exchange_us_per_item_intranode"):
        if key not in costs:
            continue
        m = ARITH.search(arithmetic[key])
        assert m, f"{name}: {key} arithmetic not found in {arithmetic[key]!r}"
        nbytes, gbps, layers, total = m.groups()
        assert int(nbytes.replace(",", "")) == want, f"{name}: {key}"
        assert costs[key] == float(total)
        assert costs[key] == pytest.approx(want / float(gbps) / 1e3 * int(layers), rel=2e-3)
