"""Cached pieces are the radix tree's evictable memory to SGLang (issue 26, part 2;
``piece_cache.py`` holds them).

Hooks on SGLang 0.5.21's trees, ``UnifiedRadixCache`` (the default, mem_cache/
unified_radix_cache.py: ``evictable_size``, ``full_evictable_size``, ``_evict`` under its
``evict``/``evict_for_alloc``, ``reset``) and ``RadixCache`` (mem_cache/radix_cache.py):

- ``evictable_size()`` (l.619) also counts the rank's cached pieces, so every place SGLang weighs
  free KV (``PrefillAdder``'s available + evictable, the decode retraction check, the pool stats
  behind ``/v1/loads`` and the idle pool invariant) sees them as evictable, as tree nodes;
- ``evict(params)`` (l.553) frees the tree's unlocked leaves first (SGLang's own policy), then
  least recently used pieces for what is still short, so a running request is never refused or
  retracted while a piece could make room;
- ``reset()`` (l.332; ``Scheduler.flush_cache`` calls it on an idle rank, then clears the
  allocator) drops the pieces with the tree: their slots are free after the clear.

The piece cache is the rank runtime's (``of_runtime``), built on first use over the scheduler's
allocator; trees over another allocator (none in a DCP server) are left alone.
"""

from __future__ import annotations

from sglang_dcp.sglang.context import ctx
from sglang_dcp.sglang.piece_cache import PieceCache


def of_runtime(rt) -> PieceCache:
    """The rank runtime's piece cache (``rt.piece_cache``), built on first use."""
    pc = getattr(rt, "piece_cache", None)
    if pc is None:
        pc = rt.piece_cache = PieceCache(rt.scheduler.token_to_kv_pool_allocator)
    return pc


def _pieces_for(tree) -> PieceCache | None:
    rt = ctx().runtime
    pc = getattr(rt, "piece_cache", None) if rt is not None else None
    if pc is None or pc.allocator is not getattr(tree, "token_to_kv_pool_allocator", None):
        return None
    return pc


def around_evictable_size(original, self, *args, **kwargs):
    """``RadixCache.evictable_size()``: the tree's unlocked tokens plus the cached pieces."""
    n = original(self, *args, **kwargs)
    pc = _pieces_for(self)
    return n + pc.tokens if pc is not None else n


def around_evict(original, self, params, *args, **kwargs):
    """``RadixCache.evict(params)``: the tree first, then pieces for the rest of
    ``params.num_tokens``; the result counts both."""
    result = original(self, params, *args, **kwargs)
    pc = _pieces_for(self)
    short = params.num_tokens - result.num_tokens_evicted
    if pc is not None and short > 0:
        result.num_tokens_evicted += pc.evict(short)
    return result


def around_reset(original, self, *args, **kwargs):
    """``RadixCache.reset()``: the pieces go with the tree (the allocator is cleared next)."""
    result = original(self, *args, **kwargs)
    pc = _pieces_for(self)
    if pc is not None:
        pc.forget_all()
    return result


around_full_evictable_size = around_evictable_size  # UnifiedRadixCache's full component


def around__evict(original, self, params, available_size_targets=None, *args, **kwargs):
    """``UnifiedRadixCache._evict(params, available_size_targets)`` (l.699, under ``evict`` and
    ``evict_for_alloc``): the tree first, then pieces for what is still short (the allocator's
    target, or ``params.num_tokens`` less what the tree freed)."""
    result = original(self, params, available_size_targets, *args, **kwargs)
    pc = _pieces_for(self)
    if pc is None or not pc.tokens:
        return result
    before = pc.tokens
    if available_size_targets:
        for _, target in available_size_targets.values():
            pc.make_room(target)
    else:
        short = params.num_tokens - result.num_tokens_evicted
        if short > 0:
            pc.evict(short)
    result.num_tokens_evicted += before - pc.tokens
    return result
