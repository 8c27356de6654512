"""PD landing in shards (issue 24), the parts that need no server: each destination's position
list, the ranks of a placement, and the prefill side's send of only a destination's positions
at page size 1 and at ``--page-size 16`` (the end-to-end runs: ``test/e2e/test_pd.py``, paged
``test/e2e/test_pd_mla.py``)."""

from __future__ import annotations

import numpy as np

from sglang_dcp.sglang import pd_landing
from sglang_dcp.types import Placement, Shard

# 1224 tokens: [0, 512) on rank 1, [512, 1024) on rank 2, the tail on its home, rank 0
P = Placement("r", 0, (Shard(1, 0, 512), Shard(2, 512, 1024), Shard(0, 1024, 1232)))


def test_each_rank_gets_its_ranges_and_the_home_the_tail():
    assert pd_landing.ranges_of(P, 1) == [(0, 512)]
    assert pd_landing.ranges_of(P, 2) == [(512, 1024)]
    assert pd_landing.ranges_of(P, 0) == [(1024, 1232)]
    assert pd_landing.ranges_of(P, 3) == []
    assert pd_landing.num_destinations(P) == 3


def test_a_destination_list_has_slots_at_its_ranges_and_minus_one_elsewhere():
    dst = pd_landing.destinations(10, [(2, 4), (7, 8)], [50, 51, 90])
    assert dst.dtype == np.int32
    assert dst.tolist() == [-1, -1, 50, 51, -1, -1, -1, 90, -1, -1]


def _send(prefill, dst):
    seen = []

    def original(self, session, src, ptrs, dst_idx, executor, *args, **kwargs):
        seen.append((src.tolist(), dst_idx.tolist()))
        return 0

    rc = pd_landing.around_send_kvcache(original, None, "s", np.array(prefill, np.int32), [1],
                                        np.array(dst, np.int32), None)  # fmt: skip
    return rc, seen


def test_the_prefill_sends_a_destination_only_its_positions():
    assert _send([10, 11, 12, 13], [-1, 7, 8, -1]) == (0, [([11, 12], [7, 8])])
    assert _send([10, 11], [5, 6]) == (0, [([10, 11], [5, 6])])  # a whole destination: as is
    assert _send([10, 11], [-1, -1]) == (0, [])  # none of this chunk is its: nothing sent


# ---- --page-size > 1: the lists are page indices (SGLang's _transfer_page_indices form) ------

PAGE = 16
# 200 tokens at page 16: [0, 64) on rank 1, [64, 128) on rank 2, the tail (4.5 pages) home
PP = Placement("r", 0, (Shard(1, 0, 64), Shard(2, 64, 128), Shard(0, 128, 200)))


def _paged_allocator(pages: int = 32):
    import torch
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator

    return PagedTokenToKVPoolAllocator(pages * PAGE, PAGE, torch.float32, "cpu", None, False)


def test_a_paged_destination_list_has_its_page_indices_at_its_pages():
    slots = [3 * 8 + i for i in range(8)] + [7 * 8 + i for i in range(8)]  # pages 3 and 7 of 8
    dst = pd_landing.destinations(40, [(8, 24)], slots, page=8)
    assert dst.dtype == np.int32 and dst.tolist() == [-1, 3, 7, -1, -1]
    assert pd_landing.page_aligned([(64, 128)], PAGE) and not pd_landing.page_aligned([(8, 24)], 16)


def test_a_holder_list_from_sglang_s_paged_allocator_equals_sglang_s_own_form():
    """A holder's whole pages from SGLang's ``PagedTokenToKVPoolAllocator``: its list is what
    SGLang's ``kv_to_page_indices`` makes of the same slots, ``-1`` at the other pages."""
    import torch
    from sglang.srt.mem_cache.common import kv_to_page_indices

    alloc = _paged_allocator()
    alloc.alloc(3 * PAGE)  # the holder's pages are not the first ones
    mine = pd_landing.ranges_of(PP, 2)
    slots = alloc.alloc(sum(b - a for a, b in mine))
    dst = pd_landing.destinations(200, mine, slots.numpy(), PAGE)
    full = torch.zeros(200, dtype=torch.int64)
    full[64:128] = slots
    want = kv_to_page_indices(full, PAGE).astype(np.int32)
    assert len(dst) == 13 and dst[4:8].tolist() == want[4:8].tolist()
    assert (dst[:4] == -1).all() and (dst[8:] == -1).all() and (dst[4:8] >= 3).all()


def test_the_home_list_marks_the_holders_pages_minus_one():
    """``around_transfer_page_indices`` on SGLang's own ``_transfer_page_indices`` at page 16:
    the home keeps its tail's pages (the last one partly filled), the holders' are ``-1``."""
    import inspect
    import types

    import torch
    from sglang.srt.disaggregation.decode import DecodePreallocQueue

    kv = torch.zeros(200, dtype=torch.int64)
    kv[128:200] = torch.arange(10 * PAGE, 10 * PAGE + 72)  # the tail on pages 10..14
    decode_req = types.SimpleNamespace(req=types.SimpleNamespace(dcp=PP, origin_input_ids=[0]),
                                       kv_receiver=types.SimpleNamespace())  # fmt: skip
    original = inspect.unwrap(DecodePreallocQueue._transfer_page_indices)  # SGLang's own
    out = pd_landing.around_transfer_page_indices(original, None, decode_req, kv, PAGE)
    assert out.tolist() == [-1] * 8 + [10, 11, 12, 13, 14]
    assert decode_req.kv_receiver.required_dst_info_num == 3


def test_the_prefill_sends_a_paged_destination_only_its_pages():
    # prefill pages 20..24 of one chunk; this destination owns the 2nd and 3rd pages
    assert _send([20, 21, 22, 23, 24], [-1, 4, 9, -1, -1]) == (0, [([21, 22], [4, 9])])
    assert _send([20, 21], [-1, -1]) == (0, [])


def test_the_home_allocates_whole_pages_for_its_tail_only(monkeypatch):
    """``around_alloc_for_decode_prealloc`` with SGLang's paged allocator: the tail (4.5 pages
    from a page boundary) gets 5 whole pages, the holders' positions none."""
    import types

    from sglang_dcp.sglang import context

    landed = {}
    books = types.SimpleNamespace(layout=lambda *a: None)
    rt = types.SimpleNamespace(home={}, ledger=books,
                               land=lambda req, layout: landed.update({req.rid: layout}))
    monkeypatch.setattr(context, "_CTX", context.RankContext())
    context.ctx().set_runtime(rt)
    alloc = _paged_allocator()
    free = alloc.available_size()
    req = types.SimpleNamespace(rid="r", dcp=PP, kv=types.SimpleNamespace())
    kv = pd_landing.around_alloc_for_decode_prealloc(
        None, None, alloc, req=req, fill_len=200, prefix_len=0, uses_swa_tail=False
    )
    assert free - alloc.available_size() == 5 * PAGE and req.kv.kv_allocated_len == 200
    tail = kv[128:200]
    assert tail[0] % PAGE == 0 and (tail[::PAGE] % PAGE == 0).all() and (kv[:128] == 0).all()
    assert landed["r"].skip_rows() == [(0, 64), (64, 128)]  # its release skips the holders' pages
