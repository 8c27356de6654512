"""Shard moves over SGLang-shaped KV (per-layer buffers + allocator) through the real
``transfer_shards`` on two gloo ranks (``sglang_dcp.sglang.kv_adapter``)."""

import pytest
import torch

from sglang_dcp.exchange.spawn import run_ranks
from sglang_dcp.sglang.kv_adapter import LayerStack

from _workers import sglang_adapter_worker


def test_moves_over_the_sglang_adapter():
    run_ranks(sglang_adapter_worker, 2, timeout_s=120)


def test_layer_stack_reads_and_writes_per_layer_buffers():
    layers = [torch.randn(10, 2, 4) for _ in range(3)]
    st = LayerStack(layers)
    slots = torch.tensor([7, 1, 4])
    assert st.shape == (3, 10, 2, 4) and st.element_size() == 4
    assert torch.equal(st[:, slots], torch.stack([x[slots] for x in layers]))
    new = torch.randn(3, 3, 2, 4)
    st[:, slots] = new
    assert all(torch.equal(layers[i][slots], new[i]) for i in range(3))
    with pytest.raises(IndexError):
        st[0]
