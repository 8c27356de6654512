"""SGLang's paged KV allocator (``--page-size > 1``) on CPU.

Upstream symptom: the first prefill on a CPU server with ``--page-size 16`` kills its scheduler
with ``RuntimeError: 0 active drivers ([]). There should only be one.``:
``PagedTokenToKVPoolAllocator.alloc_extend`` / ``alloc_decode`` (mem_cache/allocator/paged.py)
launch the Triton kernels ``alloc_extend_kernel`` / ``alloc_decode_kernel``, and CPU has no
Triton driver (outside ``TRITON_INTERPRET=1``). SGLang ships the same computation in torch for
NPUs: ``alloc_extend_naive`` (paged.py) and the ``alloc_decode`` of
``hardware_backend/npu/allocator_npu.py``. On CPU the two kernel names in ``paged.py`` run those
instead (same arguments, same results, no launch grid).
"""

from __future__ import annotations


class _Launch:
    """``kernel[grid](*args)`` without Triton: the grid is ignored (one call does the batch)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __getitem__(self, grid):
        return self.fn


def _alloc_extend(prefix_lens, seq_lens, last_loc, free_pages, out_indices, bs_upper, page_size):
    from sglang.srt.mem_cache.allocator.paged import alloc_extend_naive

    alloc_extend_naive(prefix_lens, seq_lens, last_loc, free_pages, out_indices, page_size,
                       out_indices.device)  # fmt: skip


def _alloc_decode(seq_lens, last_loc, free_pages, out_indices, bs_upper, page_size):
    """One slot per request: after ``last_loc``, or the start of the next free page when the
    request's new token opens a page (``allocator_npu.alloc_decode``)."""
    import torch

    new_page = seq_lens % page_size == 1  # the paged allocator's page_size is above 1
    start = torch.cumsum(new_page.to(torch.int64), 0) - new_page.to(torch.int64)
    nxt = last_loc.to(torch.int64) + 1
    if free_pages.numel():
        pages = free_pages[start.clamp(max=free_pages.numel() - 1)].to(torch.int64) * page_size
        nxt = torch.where(new_page, pages, nxt)
    out_indices.copy_(nxt)


def use_torch_paged_allocator() -> list[str]:
    import sglang.srt.mem_cache.allocator.paged as paged

    if isinstance(paged.alloc_extend_kernel, _Launch):
        return []
    paged.alloc_extend_kernel = _Launch(_alloc_extend)
    paged.alloc_decode_kernel = _Launch(_alloc_decode)
    return ["mem_cache.allocator.paged alloc_extend/alloc_decode (torch, as on NPU)"]
