"""A split request reuses its home's radix-tree prefix (sglang/tree_prefix.py, issue 26): it
matches the tree only at its first prefill off cached pieces; a move of the home's range frees
(and poisons) only the slots the request allocated, never the tree's; the home keeps no piece of
the tree's slots. Over SGLang's own allocators; without a server (the e2e side is
test/e2e/test_prefix_cache.py)."""

from types import SimpleNamespace

import pytest
import torch

from sglang_dcp.sglang import tree_prefix
from sglang_dcp.sglang.kv_adapter import SGLangKVPool

SIZE = 64


def test_the_tree_owned_head_of_a_move_and_of_kept_ranges():
    assert tree_prefix.keep(100, 0, 64) == 64  # all the tree's
    assert tree_prefix.keep(100, 64, 128) == 36  # the tree's [64, 100), the request's after
    assert tree_prefix.keep(100, 128, 192) == 0 and tree_prefix.keep(0, 0, 64) == 0
    assert tree_prefix.clip([(0, 64), (64, 128), (192, 256)], 100) == [(100, 128), (192, 256)]
    assert tree_prefix.clip([(0, 64)], 64) == [] and tree_prefix.clip([(0, 8)], 0) == [(0, 8)]
    req = SimpleNamespace(kv=SimpleNamespace(cache_protected_len=96))
    assert tree_prefix.protected(req) == 96
    assert tree_prefix.protected(SimpleNamespace(kv=SimpleNamespace())) == 0


def test_only_a_first_prefill_off_pieces_may_match():
    rt = SimpleNamespace(home={}, adoptions={})
    req = SimpleNamespace(rid="r")
    assert tree_prefix.may_match(rt, req)
    rt.adoptions["r"] = object()
    assert not tree_prefix.may_match(rt, req)
    rt.adoptions.clear()
    rt.home["r"] = object()
    assert not tree_prefix.may_match(rt, req)
    assert not tree_prefix.may_match(SimpleNamespace(home={}), SimpleNamespace(rid="x",
                                                                               is_retracted=True))


def _pools(page):
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    kv = MHATokenToKVPool(SIZE, page, torch.float32, 2, 8, 2, "cpu", False)
    if page == 1:
        return kv, TokenToKVPoolAllocator(SIZE, torch.float32, "cpu", kv, False)
    return kv, PagedTokenToKVPoolAllocator(SIZE, page, torch.float32, "cpu", kv, False)


@pytest.mark.parametrize("page", [1, 4])
def test_a_moved_range_frees_only_the_requests_own_slots(page):
    kv, alloc = _pools(page)
    free0 = alloc.available_size()
    tree_slots = alloc.alloc(8)  # the tree's match, [0, 8)
    own = alloc.alloc(8)  # the request's own, [8, 16)
    pool = SGLangKVPool(alloc, kv.k_buffer, kv.v_buffer)
    pool.offer("r", 0, torch.cat([tree_slots, own]), keep=8)
    pool.free(("r", 0))  # the transfer's commit at the source
    assert alloc.available_size() == free0 - 8  # the tree's slots stay allocated
    pool.offer("t", 0, tree_slots, keep=8)  # all the tree's: nothing freed
    pool.free(("t", 0))
    assert alloc.available_size() == free0 - 8
    alloc.free(tree_slots)  # (the tree's eviction)
    assert alloc.available_size() == free0


@pytest.mark.parametrize("page", [1, 4])
def test_a_range_rejoining_the_home_keeps_the_trees_slots_in_its_row(page):
    kv, alloc = _pools(page)
    free0 = alloc.available_size()
    tree_slots = alloc.alloc(8)  # the tree's match, [0, 8): still in the row
    row = torch.zeros(32, dtype=torch.int32)
    row[:8] = tree_slots.to(torch.int32)
    back = alloc.alloc(16)  # [0, 16) migrated back from a guest
    tree_prefix.rejoin(alloc, row, back, 0, 8)
    assert row[:8].tolist() == tree_slots.tolist()  # the tree's copy
    assert row[8:16].tolist() == back[8:].tolist()  # the request's own
    assert alloc.available_size() == free0 - 16  # the received copy of the tree's part freed
    later = alloc.alloc(8)  # a range past the match rejoins whole
    tree_prefix.rejoin(alloc, row, later, 16, 8)
    assert row[16:24].tolist() == later.tolist() and alloc.available_size() == free0 - 24
