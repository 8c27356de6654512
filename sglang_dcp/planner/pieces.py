"""Cached pieces of finished split requests and the directory of where they lie (issue 26, parts
2-4): pure logic, no torch, no SGLang.

When a split request finishes, each rank holding a range ``[a, b)`` of its KV keeps that range as
a **piece** (rank-side: ``sglang/piece_cache.py``, evictable, least recently used). The range's KV
depends on every token before ``b``, so a piece is keyed by ``prefix_key(tokens, b)``: the hash
chain of ``tokens[:b]`` at page granularity (``page`` tokens per link, the partial last page
hashed onto the last full page's key). A piece is used only if its whole key matches the new
prompt's key at the piece's end: equal keys mean equal token prefixes up to ``b``.

``PieceDirectory`` (one per DP controller) maps keys to ``Piece(rank, start, end, key, owner)``.
A piece is either **cached** (in the directory, evictable on its rank) or **live** (adopted by a
running request: ``take`` removes it from the directory, so neither another request nor the
directory's view of evictions counts it twice). The directory equals what the ranks hold when
every rank's report reaches it:

- ``cache(pieces)``: a finished split request's ranges, as its home reports them;
- ``evicted(rank, owners)``: the rank's piece cache freed them (memory pressure);
- ``take(layout)``: a new request adopts them (its abort frees them on the ranks: nothing to add);
- ``reconcile(rank, owners)``: the full list a rank holds (a check, or after a lost report).

``layout(tokens)`` finds the longest contiguous run of cached pieces from token 0 whose keys
match ``tokens`` (at most ``len(tokens) - 1`` tokens: the last prompt token is always prefilled,
as SGLang matches at most ``L - 1``); ``placement_on`` turns it into a ``Placement`` whose home is
the rank of the cached tail and whose new tokens join that tail.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sglang_dcp.types import Placement, Shard

Owner = tuple[str, int]  # (rid of the request whose range it was, the range's start)
KEY_PAGE = 64  # tokens per link of the servers' key chains (any fixed size: both ends use it)


class PrefixKeys:
    """Keys of ``tokens``'s prefixes at page granularity: the chain over full pages is computed
    once (O(len(tokens))), ``at(end)`` is O(page)."""

    def __init__(self, tokens: Sequence[int], page: int) -> None:
        if page < 1:
            raise ValueError(f"PrefixKeys: page must be >= 1 tokens, got {page}")
        self.tokens, self.page = tokens, page
        self._chain: list[bytes] = []
        prev = b""
        for i in range(0, len(tokens) - page + 1, page):
            prev = _link(prev, tokens[i : i + page])
            self._chain.append(prev)

    def at(self, end: int) -> bytes:
        """The key of ``tokens[:end]`` (``0 < end <= len(tokens)``)."""
        if not 0 < end <= len(self.tokens):
            raise ValueError(f"prefix end {end} outside (0, {len(self.tokens)}]")
        full, rest = divmod(end, self.page)
        key = self._chain[full - 1] if full else b""
        if rest:  # a partial last page: hashed onto the full pages' key
            key = _link(key + b"|", self.tokens[end - rest : end])
        return key


def _link(prev: bytes, block: Sequence[int]) -> bytes:
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(array("q", block).tobytes())
    return h.digest()


def prefix_key(tokens: Sequence[int], end: int, page: int) -> bytes:
    """The key of ``tokens[:end]`` at ``page`` granularity (``PrefixKeys(tokens, page).at``)."""
    return PrefixKeys(tokens[:end], page).at(end)


@dataclass(frozen=True, slots=True)
class Piece:
    """Tokens ``[start, end)`` of some request's KV cached on ``rank``; ``key`` names
    ``tokens[:end]``; ``owner`` names the rank-side entry (``(rid, start)`` of its request)."""

    rank: int
    start: int
    end: int
    key: bytes
    owner: Owner


@dataclass(frozen=True, slots=True)
class CachedLayout:
    """Pieces covering ``[0, cached)`` of a prompt in token order; the last one's rank is home."""

    pieces: tuple[Piece, ...]

    @property
    def cached(self) -> int:
        return self.pieces[-1].end if self.pieces else 0

    @property
    def home(self) -> int:
        return self.pieces[-1].rank


def pieces_of(rid: str, ranges: Iterable[tuple[int, int, int]], tokens: Sequence[int],
              page: int) -> list[Piece]:  # fmt: skip
    """The pieces a finished request leaves: one per ``(rank, start, end)`` range of its KV
    (``tokens``: its prompt and output tokens whose KV is held), keyed on ``tokens``."""
    keys = PrefixKeys(tokens, page)
    return [Piece(r, a, b, keys.at(b), (rid, a)) for r, a, b in ranges if a < b]


class PieceDirectory:
    """Where cached pieces lie, by key (the DP controller's view of every rank's piece cache)."""

    def __init__(self, num_ranks: int, page: int) -> None:
        if num_ranks < 1 or page < 1:
            raise ValueError(f"PieceDirectory: num_ranks and page must be >= 1, got "
                             f"{num_ranks}, {page}")  # fmt: skip
        self.num_ranks, self.page = num_ranks, page
        self._by_key: dict[bytes, dict[Owner, Piece]] = {}
        self._by_rank: list[dict[Owner, Piece]] = [{} for _ in range(num_ranks)]
        self._ends: dict[int, int] = {}  # piece end -> how many cached pieces end there

    # -- what the ranks report ----------------------------------------------------------------
    def cache(self, pieces: Iterable[Piece]) -> None:
        """``pieces`` are now cached on their ranks (a finished split request)."""
        for p in pieces:
            if not 0 <= p.rank < self.num_ranks:
                raise ValueError(f"piece {p.owner} on rank {p.rank}: ranks are 0.."
                                 f"{self.num_ranks - 1}")  # fmt: skip
            if not 0 <= p.start < p.end:
                raise ValueError(f"piece {p.owner}: empty or negative range [{p.start}, {p.end})")
            self._drop(p.rank, p.owner)  # a re-report replaces
            self._by_rank[p.rank][p.owner] = p
            self._by_key.setdefault(p.key, {})[p.owner] = p
            self._ends[p.end] = self._ends.get(p.end, 0) + 1

    def evicted(self, rank: int, owners: Iterable[Owner]) -> None:
        """``rank`` freed these pieces (unknown owners are ignored: taken or never cached)."""
        for o in owners:
            self._drop(rank, tuple(o))

    def take(self, layout: CachedLayout) -> None:
        """A request adopts ``layout``'s pieces: they are live KV now, out of the directory."""
        for p in layout.pieces:
            self._drop(p.rank, p.owner)

    def reconcile(self, rank: int, owners: Iterable[Owner]) -> list[Owner]:
        """``rank`` holds exactly ``owners``: forget the directory's other pieces on it; return
        the owners the directory does not know (the rank should free them: no key, no use)."""
        held = {tuple(o) for o in owners}
        for o in [o for o in self._by_rank[rank] if o not in held]:
            self._drop(rank, o)
        return sorted(o for o in held if o not in self._by_rank[rank])

    # -- what the planner asks ----------------------------------------------------------------
    def owners(self, rank: int) -> set[Owner]:
        return set(self._by_rank[rank])

    def tokens(self, rank: int) -> int:
        """Cached piece tokens on ``rank`` (evictable KV, as the tree's)."""
        return sum(p.end - p.start for p in self._by_rank[rank].values())

    def layout(self, tokens: Sequence[int]) -> CachedLayout | None:
        """The longest run of cached pieces ``[0, a) [a, b) ... [.., c)`` whose keys match
        ``tokens``, ``c <= len(tokens) - 1``; ties: fewer pieces, then lower ranks. O(number of
        distinct piece ends x page) after one O(len(tokens)) pass."""
        limit = len(tokens) - 1
        ends = sorted(e for e in self._ends if 0 < e <= limit)
        if not ends:
            return None
        keys = PrefixKeys(tokens, self.page)
        best: dict[int, tuple[int, tuple[int, ...], tuple[Piece, ...]]] = {0: (0, (), ())}
        for e in ends:
            for p in self._by_key.get(keys.at(e), {}).values():
                if p.end != e or p.start not in best:
                    continue
                n, ranks, chain = best[p.start]
                cand = (n + 1, ranks + (p.rank,), chain + (p,))
                if e not in best or cand[:2] < best[e][:2]:
                    best[e] = cand
        top = max(best)
        return CachedLayout(best[top][2]) if top else None

    def _drop(self, rank: int, owner: Owner) -> None:
        p = self._by_rank[rank].pop(owner, None)
        if p is None:
            return
        same = self._by_key.get(p.key)
        if same is not None:
            same.pop(owner, None)
            if not same:
                del self._by_key[p.key]
        self._ends[p.end] -= 1
        if not self._ends[p.end]:
            del self._ends[p.end]


def placement_on(layout: CachedLayout, rid: str, *, total_tokens: int,
                 free_kv: Sequence[int]) -> Placement | None:  # fmt: skip
    """``rid`` (``total_tokens`` = prompt + its decode budget) on ``layout``: each piece stays a
    shard on its rank, the new tokens ``[cached, total_tokens)`` join the cached tail on its home
    (one shard). ``None`` when the home's free KV (``free_kv[home]``, tokens) cannot take them:
    the policy then places the request as if nothing were cached."""
    if not layout.pieces:
        raise ValueError(f"placement of {rid!r} on an empty cached layout")
    new = total_tokens - layout.cached
    if new < 1:
        raise ValueError(f"{rid!r}: {total_tokens} tokens do not extend a cached layout of "
                         f"{layout.cached} (the last prompt token is always prefilled)")  # fmt: skip
    if free_kv[layout.home] < new:
        return None
    *head, tail = layout.pieces
    shards = [Shard(p.rank, p.start, p.end) for p in head]
    shards.append(Shard(tail.rank, tail.start, total_tokens))
    return Placement(rid, tail.rank, tuple(shards))
