"""The runtime data path across ranks: route plans, the attention exchange, KV shard transfer.

- ``route``: pure route plans (who sends which query where, what each home merges).
- ``comm``: the ``Communicator`` (explicit process group; gloo on CPU, NCCL on GPU).
- ``kv_pool``: a per-rank paged KV pool with page tables per (request, shard).
- ``buffers``: static exchange buffers with a fixed per-peer capacity, and their step metadata.
- ``exchange``: one layer's attention across ranks (pack, all-to-all, attend, all-to-all, merge).
- ``transfer``: moving sealed shards between ranks (allocate, send, confirm, free).
- ``selfcheck``: ``python -m sglang_dcp.exchange.selfcheck`` on local gloo ranks.

Names below load lazily, so ``route`` stays importable without torch.
"""

import importlib

_WHERE = {
    "CapacityError": "buffers",
    "ExchangeBuffers": "buffers",
    "ExchangeShape": "buffers",
    "StepMeta": "buffers",
    "build_step_meta": "buffers",
    "Communicator": "comm",
    "LocalCommunicator": "comm",
    "TorchDistCommunicator": "comm",
    "default_kernels": "exchange",
    "exchange_attention": "exchange",
    "merge_rounds": "exchange",
    "KVPool": "kv_pool",
    "KVPoolFull": "kv_pool",
    "GuestItem": "route",
    "MergePart": "route",
    "RankRoute": "route",
    "build_rank_route": "route",
    "build_routes": "route",
    "max_pair_items": "route",
    "num_rounds": "route",
    "split_rounds": "route",
    "Phase": "transfer",
    "ShardMove": "transfer",
    "TransferResult": "transfer",
    "transfer_shards": "transfer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"sglang_dcp.exchange.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'sglang_dcp.exchange' has no attribute {name!r}")
