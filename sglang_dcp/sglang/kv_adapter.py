"""SGLang's KV pool seen through the ``KVPool`` interface that ``exchange.transfer_shards`` uses.

``transfer_shards`` (allocate -> send -> checksum confirm -> free, the source untouched on any
failure) is written against ``exchange.kv_pool.KVPool``. This adapter gives it one SGLang 0.5.21
scheduler's pools instead, for one batch of moves:

- the sender's ranges are registered up front (``offer``) as one "shard" each, with the slots the
  home's ``req_to_token`` row names for them, so ``transfer_shards`` never needs to split;
- the receiver allocates from the rank's own ``token_to_kv_pool_allocator`` (``alloc(n)``,
  ``None`` when full; unlocked radix-cache entries are evicted first, ``tree_cache``), so guest
  KV counts in SGLang's load, admission and ``/v1/loads`` like any other KV;
- ``k`` / ``v`` present the per-layer buffers (``MHATokenToKVPool.k_buffer[layer]``:
  ``[num_slots, num_kv_heads, head_dim]``) as one ``[num_layers, num_slots, ...]`` view for
  ``pool.k[:, slots]`` reads and writes.

Device discipline: every slot tensor stays where the allocator and the pools keep theirs (the
device on a GPU): offered slots are views of ``req_to_token``, allocated ones are what
``alloc`` returned, and ``free`` hands them back as they are, through ``free_segment`` (a
paged allocator then frees whole pages without ``torch.unique``'s host sync). Nothing here reads
a slot on the host. Shapes: slots are int64 ``[n]`` tensors on the pool's device. Nothing here
imports SGLang; the pools are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sglang_dcp.exchange.kv_pool import KVPoolFull, ShardKey


class LayerStack:
    """``[num_layers, num_slots, heads, dim]`` over a list of per-layer ``[num_slots, heads,
    dim]`` tensors, for ``stack[:, slots]`` (read: a new tensor) and ``stack[:, slots] = x``."""

    def __init__(self, layers: Sequence[torch.Tensor]) -> None:
        if not layers:
            raise ValueError("LayerStack needs at least one layer")
        self.layers = list(layers)
        first = self.layers[0]
        self.shape = (len(self.layers), *first.shape)
        self.dtype = first.dtype
        self.device = first.device

    def element_size(self) -> int:
        return self.layers[0].element_size()

    @staticmethod
    def _slots(key) -> torch.Tensor:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)):
            raise IndexError("LayerStack supports only [:, slots]")
        return key[1]

    def __getitem__(self, key) -> torch.Tensor:
        slots = self._slots(key)
        return torch.stack([buf[slots] for buf in self.layers])

    def __setitem__(self, key, value: torch.Tensor) -> None:
        slots = self._slots(key)
        for i, buf in enumerate(self.layers):
            buf[slots] = value[i].to(buf.dtype)


class SGLangKVPool:
    """The ``KVPool`` surface ``transfer_shards`` needs, over one scheduler's allocator and KV
    buffers. One instance per batch of moves."""

    def __init__(self, allocator, k_layers: Sequence[torch.Tensor], v_layers: Sequence[torch.Tensor],
                 tree_cache=None):
        self.allocator = allocator
        self.tree_cache = tree_cache  # a radix cache: its unlocked entries are evicted for room
        self.k = LayerStack(k_layers)
        self.v = LayerStack(v_layers)
        self._slots: dict[ShardKey, torch.Tensor] = {}
        self._end: dict[ShardKey, int] = {}
        self.freed: list[ShardKey] = []  # sender ranges whose slots went back to the allocator
        self._keep: dict[ShardKey, int] = {}  # offered ranges' leading slots owned by a tree

    # -- sender side ---------------------------------------------------------------------------
    def offer(self, rid: str, start: int, slots: torch.Tensor, keep: int = 0) -> None:
        """Register tokens ``[start, start + len(slots))`` of ``rid`` held at ``slots``; the
        first ``keep`` slots are not this range's to free (a radix tree owns them,
        ``tree_prefix.py``): ``free`` gives back only the rest."""
        key = (rid, start)
        self._slots[key] = slots.to(torch.long)  # a device op: no copy to the host
        self._end[key] = start + slots.numel()
        if keep:
            self._keep[key] = keep

    def key_at(self, rid: str, token: int) -> ShardKey:
        for (r, start), end in self._end.items():
            if r == rid and start <= token < end:
                return (r, start)
        raise KeyError(f"no offered range of {rid!r} holds token {token}")

    def num_tokens(self, key: ShardKey) -> int:
        return self._slots[key].numel()

    def split(self, key: ShardKey, at: int) -> ShardKey:
        raise ValueError(
            f"{key}: the SGLang adapter moves whole offered ranges (offer exactly the move)"
        )

    def join(self, key: ShardKey, nxt: ShardKey) -> None:  # pragma: no cover - never split
        raise ValueError("the SGLang adapter never splits, so it never joins")

    # -- receiver side -------------------------------------------------------------------------
    def allocate(self, key: ShardKey, num_tokens: int) -> None:
        if key in self._slots:
            raise KeyError(f"{key} is already held here")
        if self.tree_cache is not None:  # as SGLang's own allocations (evict_to_free_tokens)
            self.allocator.evict_to_free_tokens(self.tree_cache, num_tokens)
        slots = self.allocator.alloc(num_tokens)
        if slots is None:
            raise KVPoolFull(
                f"{num_tokens} KV slots requested, {self.allocator.available_size()} free"
            )
        self._slots[key] = slots.to(torch.long)
        self._end[key] = key[1] + num_tokens

    # -- both ----------------------------------------------------------------------------------
    def has(self, key: ShardKey) -> bool:
        return key in self._slots

    def slot_tensor(self, key: ShardKey) -> torch.Tensor:
        return self._slots[key]

    def free(self, key: ShardKey) -> None:
        """Give ``key``'s slots back (moves are page-aligned, so ``key[1]`` starts a page)."""
        slots = self._slots.pop(key)
        self._end.pop(key)
        k = self._keep.pop(key, 0)
        if k < slots.numel():
            free_slots(self.allocator, slots[k:], key[1] + k)
        self.freed.append(key)


def free_slots(allocator, slots: torch.Tensor, start: int) -> None:
    """Give ``slots`` (tokens from ``start`` on) back: through ``free_segment`` when ``start``
    begins a page (a paged allocator then frees each page once without ``torch.unique``, which
    syncs with the host on a GPU), else through ``free``."""
    free_segment = getattr(allocator, "free_segment", None)
    if free_segment is not None and start % max(1, getattr(allocator, "page_size", 1)) == 0:
        free_segment(slots, start_pos=start)
    else:
        allocator.free(slots)
