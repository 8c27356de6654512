"""A split request reuses its home's radix-tree prefix (issue 26: a session whose early turns were
unsplit, so their KV is in one rank's tree, on the first turn the planner splits).

The planner makes the rank whose tree holds the longest prefix the home of such a request
(``planner.prefix.split_home``). On the home, SGLang then matches the request's tree prefix as
for any request (``radix.around_compute_max_prefix_len``): it locks the matched nodes, sets
``req.kv.cache_protected_len`` to the match and starts prefilling there, so
``meta_info["cached_tokens"]`` reports it. The tree owns slots ``[0, protected)`` of the row:

- ``keep`` (shipping): a move of the home's ``[start, end)`` ships the tree's slots as any others,
  but the home frees (and, under ``SGLANG_DCP_POISON_MOVED``, poisons) only the ones the request
  allocated itself, ``[max(start, protected), end)``: the tree's stay its own, valid for the next
  match, and are freed by SGLang's eviction;
- ``clip`` (release): the home's kept pieces (``piece_release.home_ranges``) leave out the
  tree-owned tokens (one owner per slot);
- ``rejoin`` (a migration back to the home): the tree-owned head of the range keeps its row
  entries (the tree's copy, never freed nor poisoned), the received slots of it are freed;
- the lock the match took is released once, by SGLang at the request's release
  (``release_kv_cache`` -> ``tree_cache.unpin``, the row freed from ``protected`` on), so the
  tree's copy becomes evictable again and nothing leaks.

A request placed on cached pieces (``piece_adopt``), one that already started (its header
seen) or a retracted one matches nothing: its prefix is the adoption's, or already shipped.
Host work: O(1) per move and per request.
"""

from __future__ import annotations


def may_match(rt, req) -> bool:
    """``req`` (split, on its home) may match its home's tree: its first prefill, not placed on
    cached pieces."""
    if req.rid in rt.home or getattr(req, "is_retracted", False):
        return False
    return req.rid not in getattr(rt, "adoptions", {})  # (until its first header)


def protected(req) -> int:
    """Tokens ``[0, n)`` of ``req``'s row owned by its home's tree (its match)."""
    kv = getattr(req, "kv", None)
    return int(getattr(kv, "cache_protected_len", 0) or 0)


def keep(owned: int, start: int, end: int) -> int:
    """Leading tokens of the home's move ``[start, end)`` whose slots the tree owns (the tree
    owns ``[0, owned)``): the home neither frees nor poisons them."""
    return max(0, min(owned, end) - start)


def clip(ranges: list[tuple[int, int]], owned: int) -> list[tuple[int, int]]:
    """``ranges`` minus the tree-owned ``[0, owned)``."""
    return [(max(a, owned), b) for a, b in ranges if b > max(a, owned)]


def rejoin(allocator, row, slots, start: int, owned: int) -> None:
    """A range ``[start, start + len(slots))`` of the home's request comes back to the home
    (``row``: its ``req_to_token`` row, ``slots``: int64 ``[n]`` received, on the pool's device):
    the row takes the slots past the tree-owned ``[0, owned)``; the rest are freed (the row still
    names the tree's slots there, which the release leaves to the tree)."""
    from sglang_dcp.sglang.kv_adapter import free_slots

    k = keep(owned, start, start + slots.numel())
    if k:
        free_slots(allocator, slots[:k], start)
    row[start + k : start + slots.numel()] = slots[k:].to(row.dtype)
