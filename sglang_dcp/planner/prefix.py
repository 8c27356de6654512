"""Where prompt prefixes lie: a per-controller prefix directory and the home choice it weighs.

``PrefixDirectory`` maps hash chains of a prompt's full blocks (``block`` tokens each) to the
ranks whose radix tree was last given that prefix: block ``k``'s key hashes block ``k``'s tokens
with block ``k - 1``'s key, so a key names the whole token prefix up to its block's end (a
range's KV depends on every token before it). The controller records each prompt it places
whole on a rank; it never sees the ranks' evictions, so for unsplit requests the directory is
a hint, kept to each rank's capacity by least-recent use: a stale entry costs a worse
placement, never a wrong output (the rank's own radix cache matches the real tokens).

``prefix_home`` weighs it: among the ranks that could take the request whole, the one whose
prefill saving (``CostProfile.prefill_us`` of the prompt minus that of its uncached part) most
exceeds the decode cost of leaving the best-balanced rank (the extra predicted step time,
paid on every one of its ``max_new_tokens`` decode steps, since every rank waits for the
slowest one); ``None`` when no cached rank wins, and the policy chooses as it would without a
cache. Pure Python: no torch, no SGLang.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

DEFAULT_BLOCK = 64  # tokens per directory block: a match is found to within one block


def chain_keys(tokens: Sequence[int], block: int = DEFAULT_BLOCK) -> list[bytes]:
    """Key of every full ``block`` of ``tokens``: ``key_k = blake2b(key_{k-1} || block_k)``
    (16 bytes; ``key_{-1}`` empty). O(len(tokens))."""
    keys, prev = [], b""
    for i in range(0, len(tokens) - block + 1, block):
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(array("q", tokens[i : i + block]).tobytes())
        prev = h.digest()
        keys.append(prev)
    return keys


class PrefixDirectory:
    """Which ranks hold which prompt prefixes, by chain key; each rank keeps at most
    ``capacity[rank] // block`` keys, least recently recorded evicted first."""

    def __init__(self, capacity: Sequence[int], block: int = DEFAULT_BLOCK) -> None:
        if block < 1:
            raise ValueError(f"PrefixDirectory: block must be >= 1 tokens, got {block}")
        self.block = block
        self._limit = [max(0, c) // block for c in capacity]
        self._holders: dict[bytes, int] = {}  # key -> bit mask of the ranks holding it
        self._lru: list[OrderedDict[bytes, None]] = [OrderedDict() for _ in capacity]

    @property
    def num_ranks(self) -> int:
        return len(self._lru)

    def keys(self, tokens: Sequence[int]) -> list[bytes]:
        return chain_keys(tokens, self.block)

    def match(self, keys: Sequence[bytes]) -> list[int]:
        """Cached prefix tokens per rank: ``block`` x the longest run of ``keys`` (from the
        first) that the rank holds. O(len(keys))."""
        out = [0] * self.num_ranks
        live = (1 << self.num_ranks) - 1
        for k, key in enumerate(keys):
            live &= self._holders.get(key, 0)
            if not live:
                break
            for r in range(self.num_ranks):
                if live >> r & 1:
                    out[r] = (k + 1) * self.block
        return out

    def record(self, rank: int, keys: Sequence[bytes]) -> None:
        """``rank``'s tree now holds the prefixes ``keys`` name (the deepest most recent)."""
        lru, bit = self._lru[rank], 1 << rank
        for key in keys:
            lru[key] = None
            lru.move_to_end(key)
            self._holders[key] = self._holders.get(key, 0) | bit
        while len(lru) > self._limit[rank]:
            self._drop(rank, lru.popitem(last=False)[0])

    def forget(self, rank: int, keys: Sequence[bytes]) -> None:
        """``rank`` no longer holds ``keys`` (an eviction it reported, or a failed prefill)."""
        lru = self._lru[rank]
        for key in keys:
            if key in lru:
                del lru[key]
                self._drop(rank, key)

    def held(self, rank: int) -> int:
        """Keys ``rank`` holds (tests, ``/v1/loads``)."""
        return len(self._lru[rank])

    def _drop(self, rank: int, key: bytes) -> None:
        mask = self._holders.get(key, 0) & ~(1 << rank)
        if mask:
            self._holders[key] = mask
        else:
            self._holders.pop(key, None)


def prefix_home(
    steps: Sequence[float | None],
    cached: Sequence[int],
    *,
    prompt_len: int,
    decode_steps: int,
    prefill_us,
) -> int | None:
    """The home worth pinning for a request whose prefix ``cached[r]`` tokens are in rank
    ``r``'s tree, or ``None`` (no cached rank wins: the policy chooses freely).

    ``steps[r]``: the predicted step time (µs) with the request whole on ``r`` (``None``: no
    room; ``DcpPolicy.whole_steps``); ``prefill_us(n)``: the profile's prefill time of ``n``
    tokens. Rank ``r`` scores ``prefill_us(L) - prefill_us(L - cached[r]) - (steps[r] -
    min(steps)) * decode_steps``; the best positive score among cached ranks wins, ties to
    the lowest index."""
    ok = [r for r, s in enumerate(steps) if s is not None]
    if not ok or not any(cached[r] for r in ok):
        return None
    best = min(steps[r] for r in ok)
    full = prefill_us(prompt_len)

    def score(r: int) -> float:
        c = min(cached[r], max(0, prompt_len - 1))  # SGLang matches at most L - 1 tokens
        return full - prefill_us(prompt_len - c) - (steps[r] - best) * decode_steps

    r = max((r for r in ok if cached[r]), key=lambda r: (score(r), -r))
    return r if score(r) > 0 else None


def split_home(steps: Sequence[float | None], cached: Sequence[int]) -> int | None:
    """The home to pin for a request that fits whole on no rank (every ``steps[r]`` is
    ``None``), so it will be split: the rank whose tree holds its longest prefix (ties to the
    lowest index), whose tree the home's first prefill then matches (``sglang/tree_prefix.py``);
    ``None`` if it fits whole somewhere (``prefix_home`` weighs that) or no tree holds any."""
    if any(s is not None for s in steps) or not any(cached):
        return None
    return max(range(len(cached)), key=lambda r: (cached[r], -r))
