"""SGLang's radix cache with KV sharding on (issue 26): unsplit requests use the tree exactly as
in plain SGLang; requests whose KV spans ranks (``RankRuntime.split_reqs``) only read it.

A split request's KV leaves its home in pieces (``shipping.ship``: the home frees the shipped
slots), so none of its own slots may go into the tree: a tree node pointing at a shipped slot
would hand freed (or poisoned) KV to the next request matching it. So, on the home, for split
requests only:

- **no match** past its first prefill or when placed on cached pieces:
  ``Req._compute_max_prefix_len`` (schedule_batch.py:1702, the key limit of
  ``init_next_round_input``) is 0, so ``match_prefix`` returns the root (an empty match; the lock
  SGLang takes on it is released at the request's end as usual). Its first prefill matches the
  tree as SGLang does (``tree_prefix.py``): the tree keeps owning the matched slots, the home
  ships copies of them and frees only the request's own;
- **no insert while it prefills**: ``common.maybe_cache_unfinished_req`` (common.py:172) does what
  SGLang's ``ChunkCache.cache_unfinished_req`` does with the radix cache disabled: the chunk's row
  becomes ``req.prefix_indices`` (``PrefillAdder.add_chunked_req`` reads it), the tree is not
  touched;
- **no insert at release**: ``sched_hooks.around_release_kv_cache`` passes ``is_insert=False``, so
  ``release_kv_cache`` frees the row (minus shipped ranges, ``around_free_kv_row``) instead of
  handing it to the tree.

Guest KV that a rank receives is allocated after evicting unlocked tree entries if the allocator
is short (``kv_adapter.SGLangKVPool``), as SGLang's own allocations do.
"""

from __future__ import annotations

from sglang_dcp.sglang.context import runtime
from sglang_dcp.sglang.tree_prefix import may_match


def is_split(req) -> bool:
    """``req`` is a split request on its home (its placement spans several ranks)."""
    rt = runtime()
    return rt is not None and rt.split_reqs.get(req.rid) is req


def around_compute_max_prefix_len(original, self, input_len, *args, **kwargs):
    """``Req._compute_max_prefix_len(input_len)`` (schedule_batch.py:1702): a split request
    matches its home's tree only at its first prefill when not placed on pieces
    (``tree_prefix.may_match``)."""
    if is_split(self) and not may_match(runtime(), self):
        return 0
    return original(self, input_len, *args, **kwargs)


def around_maybe_cache_unfinished_req(original, req, tree_cache, *args, **kwargs):
    """``common.maybe_cache_unfinished_req(req, tree_cache)`` (common.py:172): a split request's
    prefilled KV stays out of the tree (``ChunkCache.cache_unfinished_req``'s behaviour)."""
    if not is_split(req):
        return original(req, tree_cache, *args, **kwargs)
    import torch

    row = tree_cache.req_to_token_pool.req_to_token[req.kv.req_pool_idx]
    # a device copy on the pool's device (as ChunkCache does); no host sync
    req.prefix_indices = row[: req.extend_range.end].to(dtype=torch.int64, copy=True)
