"""Cached pieces over SGLang's own allocators and radix tree (sglang/piece_cache.py,
radix_pieces.py; issue 26 part 2): least recently used first, slots back to the allocator,
evictable to SGLang (``RadixCache.evictable_size``/``evict``), and taken by a guest shard's
allocation (``kv_adapter.SGLangKVPool``) after the tree's unlocked nodes."""

import inspect
from array import array
from types import SimpleNamespace

import pytest
import torch

from sglang_dcp.sglang import context, radix_pieces
from sglang_dcp.sglang.kv_adapter import SGLangKVPool
from sglang_dcp.sglang.piece_cache import PieceCache

SIZE = 64


def _pools(page):
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool

    kv = MHATokenToKVPool(SIZE, page, torch.float32, 2, 8, 2, "cpu", False)
    if page == 1:
        alloc = TokenToKVPoolAllocator(SIZE, torch.float32, "cpu", kv, False)
    else:
        alloc = PagedTokenToKVPoolAllocator(SIZE, page, torch.float32, "cpu", kv, False)
    return kv, alloc, ReqToTokenPool(4, SIZE, "cpu", False)


@pytest.fixture(params=[1, 4], ids=["page1", "page4"])
def pools(request):
    return _pools(request.param)


def test_pieces_are_freed_least_recently_used_first(pools):
    _, alloc, _ = pools
    pc = PieceCache(alloc)
    free0 = alloc.available_size()
    for i in range(3):
        pc.put((f"r{i}", 0), alloc.alloc(16))
    assert pc.tokens == 48 and alloc.available_size() == free0 - 48
    pc.touch(("r0", 0))  # r0 used last: r1 goes first
    assert pc.evict(20) == 32  # whole pieces: r1 and r2
    assert pc.owners() == [("r0", 0)] and pc.drain_evicted() == [("r1", 0), ("r2", 0)]
    assert alloc.available_size() == free0 - 16 and pc.drain_evicted() == []
    slots = pc.take(("r0", 0))  # adopted: live KV now, no longer the cache's
    assert slots.numel() == 16 and pc.tokens == 0 and pc.take(("r0", 0)) is None
    assert alloc.available_size() == free0 - 16  # the adopter holds them
    alloc.free(slots)
    assert alloc.available_size() == free0


def test_a_piece_cached_again_under_its_owner_frees_the_old_slots(pools):
    _, alloc, _ = pools
    pc = PieceCache(alloc)
    free0 = alloc.available_size()
    pc.put(("r", 32), alloc.alloc(16))
    pc.put(("r", 32), alloc.alloc(16))  # prefilled again after a retraction
    assert pc.tokens == 16 and alloc.available_size() == free0 - 16
    pc.make_room(SIZE)
    assert pc.tokens == 0 and alloc.available_size() == free0


def _tree(alloc, req_pool, page):
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixCache

    return RadixCache(CacheInitParams(disable=False, req_to_token_pool=req_pool,
                                      token_to_kv_pool_allocator=alloc, page_size=page))


@pytest.fixture
def hooked(monkeypatch):
    """The two ``RadixCache`` hooks as the server installs them, and a rank runtime."""
    from sglang.srt.mem_cache.radix_cache import RadixCache

    for name in ("evictable_size", "evict"):
        # SGLang's own function: another test module may have applied the plugin's hooks to
        # this process already (HookRegistry wrappers keep ``__wrapped__``)
        orig = inspect.unwrap(getattr(RadixCache, name))
        ours = getattr(radix_pieces, f"around_{name}")
        monkeypatch.setattr(RadixCache, name,
                            lambda self, *a, _o=orig, _f=ours, **k: _f(_o, self, *a, **k))
    rt = SimpleNamespace(scheduler=None)
    old = context.use(context.RankContext(runtime=rt))
    yield rt
    context.use(old)


@pytest.mark.parametrize("page", [1, 4])
def test_the_tree_counts_and_evicts_pieces_after_its_own_nodes(hooked, page):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    kv, alloc, req_pool = _pools(page)
    tree = _tree(alloc, req_pool, page)
    hooked.scheduler = SimpleNamespace(token_to_kv_pool_allocator=alloc)
    pc = radix_pieces.of_runtime(hooked)
    assert radix_pieces.of_runtime(hooked) is pc
    free0 = alloc.available_size()
    tree.insert(InsertParams(key=RadixKey(array("q", range(100, 116))), value=alloc.alloc(16)))
    pc.put(("a", 0), alloc.alloc(16))
    pc.put(("b", 0), alloc.alloc(16))
    assert tree.evictable_size() == 48  # SGLang's admission sees the pieces as evictable
    assert tree.evict(EvictParams(num_tokens=24)).num_tokens_evicted == 32  # tree, then "a"
    assert pc.owners() == [("b", 0)] and tree.evictable_size() == 16
    # a guest shard landing here evicts through SGLang's evict_to_free_tokens: the last piece
    guest = SGLangKVPool(alloc, kv.k_buffer, kv.v_buffer, tree_cache=tree)
    guest.allocate(("g", 0), free0 - 8)
    assert pc.tokens == 0 and pc.drain_evicted() == [("a", 0), ("b", 0)]
    guest.free(("g", 0))
    assert alloc.available_size() == free0


def test_trees_over_another_allocator_are_left_alone(hooked):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    _, alloc, req_pool = _pools(1)
    _, other, _ = _pools(1)
    hooked.scheduler = SimpleNamespace(token_to_kv_pool_allocator=other)
    radix_pieces.of_runtime(hooked).put(("a", 0), other.alloc(8))
    tree = _tree(alloc, req_pool, 1)
    assert tree.evictable_size() == 0
    assert tree.evict(EvictParams(num_tokens=8)).num_tokens_evicted == 0
    assert hooked.piece_cache.tokens == 8
