"""A rank's cached pieces (issue 26, part 2): KV ranges of finished split requests kept where they
lie, in SGLang's allocator memory, evictable least recently used first.

A piece is the allocator slots of tokens ``[start, end)`` of some request, held under ``owner =
(rid, start)`` (the controller's ``planner.pieces.PieceDirectory`` keys it by the token prefix;
this side never needs the tokens). Its slots stay allocated, so ``/v1/loads`` counts them in the
pool; to SGLang they are evictable memory like the radix tree's unlocked nodes:

- ``radix_hooks.around_evictable_size`` adds ``tokens`` to ``RadixCache.evictable_size()``, so
  SGLang's admission (``PrefillAdder``: available + evictable), its decode retraction check and
  its pool invariant see them as the tree's own evictable tokens;
- ``radix_hooks.around_evict`` frees pieces for what the tree could not free, so every SGLang
  allocation that evicts (``evict_to_free_tokens``) and every guest shard a rank receives
  (``kv_adapter.SGLangKVPool``) takes pieces before a running request is refused or retracted.

``evicted`` lists the owners freed since the last ``drain_evicted()`` (the rank's report to the
controller, so its directory stays equal to what the rank holds). Slots: int64 ``[n]`` tensors on
the pool's device, kept as the allocator gave them; nothing here reads them on the host.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from sglang_dcp.sglang.kv_adapter import free_slots

Owner = tuple[str, int]


class PieceCache:
    """The pieces one rank holds, least recently used first."""

    def __init__(self, allocator) -> None:
        self.allocator = allocator
        self._lru: OrderedDict[Owner, torch.Tensor] = OrderedDict()
        self.tokens = 0  # cached piece tokens (evictable)
        self.evicted: list[Owner] = []

    def __contains__(self, owner: Owner) -> bool:
        return owner in self._lru

    def owners(self) -> list[Owner]:
        """Held owners, least recently used first."""
        return list(self._lru)

    def put(self, owner: Owner, slots: torch.Tensor) -> None:
        """Keep ``slots`` (tokens from ``owner[1]`` on) as a piece, most recently used. A piece
        already held under ``owner`` (the same request's range, prefilled again after a
        retraction) is freed first."""
        if owner in self._lru:
            self._free(owner)
        if slots.numel():
            self._lru[owner] = slots
            self.tokens += slots.numel()

    def take(self, owner: Owner) -> torch.Tensor | None:
        """Adopt a piece: its slots leave the cache (now live KV of a request), or ``None`` if it
        was evicted (the caller recomputes that range)."""
        slots = self._lru.pop(owner, None)
        if slots is not None:
            self.tokens -= slots.numel()
        return slots

    def drop(self, owner: Owner) -> None:
        """Free one piece (if held)."""
        if owner in self._lru:
            self._free(owner)

    def touch(self, owner: Owner) -> None:
        if owner in self._lru:
            self._lru.move_to_end(owner)

    def evict(self, num_tokens: int) -> int:
        """Free least recently used pieces until ``num_tokens`` tokens are freed or none is
        left; returns the tokens freed."""
        freed = 0
        while freed < num_tokens and self._lru:
            freed += self._free(next(iter(self._lru)))
        return freed

    def make_room(self, num_tokens: int) -> None:
        """Evict until the allocator has ``num_tokens`` free slots (or no piece is left)."""
        short = num_tokens - self.allocator.available_size()
        if short > 0:
            self.evict(short)

    def clear(self) -> int:
        return self.evict(self.tokens)

    def forget_all(self) -> None:
        """Drop every piece without freeing its slots: the allocator was cleared under them
        (``Scheduler.flush_cache`` resets the tree, then clears the allocator)."""
        self.evicted += list(self._lru)
        self._lru.clear()
        self.tokens = 0

    def drain_evicted(self) -> list[Owner]:
        out, self.evicted = self.evicted, []
        return out

    def _free(self, owner: Owner) -> int:
        slots = self._lru.pop(owner)
        self.tokens -= slots.numel()
        free_slots(self.allocator, slots, owner[1])
        self.evicted.append(owner)
        return slots.numel()
