"""The runtime data path across ranks: route plans, the attention exchange, KV shard transfer.

- ``route``: pure route plans (who sends which query where, what each home merges).
- ``comm``: the ``Communicator`` (explicit process group; gloo on CPU, NCCL on GPU).
- ``kv_pool``: a per-rank paged KV pool with page tables per (request, shard).
- ``buffers``: static exchange buffers with a fixed per-peer capacity.
- ``static``: ``StaticExchange``, the one runtime that lays each step's route out in them.
- ``exchange``: one layer's attention across ranks (pack, all-to-all, attend, all-to-all, merge).
- ``transfer``: moving sealed shards between ranks (allocate, send in bounded pieces, confirm,
  free; ``move_staging``: the pieces, their staging buffers, the checksum).
- ``selfcheck``: ``python -m sglang_dcp.exchange.selfcheck --pool sglang`` on local gloo ranks,
  over SGLang's pools and the server's own loader (``sglang/selfcheck_rank.py``).

Names below load lazily, so ``route`` stays importable without torch.
"""

import importlib

_WHERE = {
    "ExchangeBuffers": "buffers",
    "ExchangeShape": "buffers",
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
