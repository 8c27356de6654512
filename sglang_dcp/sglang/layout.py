"""One request's KV layout: which rank holds each token range, as this rank knows it.

The one representation of where a split request's KV is. A home keeps its request's whole layout
(``entries.HomeEntry.layout``), a guest the ranges it holds (``entries.GuestEntry.layout``), and
``req.dcp_layout`` is the layout the home last reported (``ledger.py``). Every view the data path
needs is a query on it, none is kept beside it by hand:

- ``shards(seq_len)``: (rank, start, end) tiling ``[0, seq_len)`` in token order, the home's tail
  last: the step header's tuples (``step.Decoding``/``Extending``), ``meta_info["dcp"]``;
- ``sealed()``: the ranges the ledger reports (``Policy.restate``'s ``[0, T)``);
- ``away()`` / ``held(rank)``: the ranges on other ranks / on ``rank``, as their holders keep
  them (one range per move that put it there, minus what later moves took away);
- ``skip_rows()``: the ranges of the home's ``req_to_token`` row SGLang's release must not free
  (away, or kept as pieces);
- ``moved`` / ``failed`` / ``offered``: the moves that happened, those that failed (the range
  stayed), and the sealed tokens ``[0, offered)`` shipped or tried.

Immutable: each event (``with_move``, ``with_failed``, ``with_kept``, ``with_offered``) returns
a new layout. Pure Python (no torch, no SGLang); ranges are half open.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

MOVED = "moved"  # tokens [start, end) went to ``rank`` (a shard move, a PD landing, an adoption)
FAILED = "failed"  # a move of [start, end) to ``rank`` failed: the tokens stayed where they were
KEPT = "kept"  # the home's own [start, end) kept as a piece at release (its row skips it)

Spans = tuple[tuple[int, int, int], ...]  # (rank, start, end), token order


@dataclass(frozen=True, slots=True)
class Range:
    rank: int
    start: int
    end: int
    state: str = MOVED


@dataclass(frozen=True, slots=True)
class KvLayout:
    """``rid`` homed on ``home``; tokens ``[0, sealed_end)`` are the planner's sealed shards
    (``placement.shards[-1].start``); ``ranges`` are the events in the order they happened."""

    rid: str
    home: int
    sealed_end: int = 0
    ranges: tuple[Range, ...] = ()
    offered: int = 0

    @classmethod
    def of(cls, placement, moved: Iterable[tuple[int, int, int]] = (), offered: int = 0):
        """The layout of ``placement`` (``types.Placement``) after the ``moved`` ranges."""
        return cls(placement.rid, placement.home_rank, placement.shards[-1].start,
                   tuple(Range(r, a, b) for r, a, b in moved), offered)  # fmt: skip

    # -- events ---------------------------------------------------------------------------------
    def with_move(self, rank: int, start: int, end: int) -> KvLayout:
        return replace(self, ranges=(*self.ranges, Range(rank, start, end)))

    def with_moves(self, moves: Iterable[tuple[int, int, int]]) -> KvLayout:
        return replace(self, ranges=(*self.ranges, *(Range(r, a, b) for r, a, b in moves)))

    def with_failed(self, rank: int, start: int, end: int) -> KvLayout:
        return replace(self, ranges=(*self.ranges, Range(rank, start, end, FAILED)))

    def with_kept(self, spans: Iterable[tuple[int, int]]) -> KvLayout:
        kept = tuple(Range(self.home, a, b, KEPT) for a, b in spans)
        return replace(self, ranges=(*self.ranges, *kept)) if kept else self

    def with_offered(self, upto: int) -> KvLayout:
        """Sealed tokens ``[0, upto)`` shipped or tried (the same object if nothing changed, so
        ``entries.HomeEntry.shards_at`` keeps its cache)."""
        return self if upto <= self.offered else replace(self, offered=upto)

    # -- queries --------------------------------------------------------------------------------
    @property
    def moved(self) -> Spans:
        """(rank, start, end) of every move that happened, in order."""
        return tuple((x.rank, x.start, x.end) for x in self.ranges if x.state == MOVED)

    @property
    def failed(self) -> Spans:
        return tuple((x.rank, x.start, x.end) for x in self.ranges if x.state == FAILED)

    @property
    def end(self) -> int:
        """The sealed shards' end or the last moved token, whichever is later."""
        return max([self.sealed_end, *(b for _, _, b in self.moved)])

    def shards(self, seq_len: int) -> Spans:
        """Where the KV ``[0, seq_len)`` is: each move on its rank, every other token on the
        home, which always has the last range (its tail, possibly empty)."""
        if seq_len < self.sealed_end:
            raise ValueError(
                f"{self.rid!r}: {seq_len} KV tokens, but the planner's sealed shards end at "
                f"{self.sealed_end}"
            )
        moved = self.moved
        for _, a, b in moved:
            if b > seq_len:
                raise ValueError(f"{self.rid!r}: moved range [{a}, {b}) past {seq_len} tokens")
        return where_now(self.home, moved, seq_len)

    def upto(self, end: int) -> Spans:
        """``[0, end)`` where it is, moves clipped to ``end`` (a prefill chunk's view: its
        request may not have reached its sealed end yet)."""
        return where_now(self.home, self.moved, end)

    def sealed(self) -> list[list[int]]:
        """``[0, end)`` where it is, empty ranges dropped (the ledger's report)."""
        return [list(x) for x in self.shards(self.end) if x[2] > x[1]]

    def pieces(self) -> Spans:
        """One (rank, start, end) per part of a move still where that move put it, by start."""
        moves = [x for x in self.ranges if x.state == MOVED]
        out = []
        for i, x in enumerate(moves):
            later = [(y.start, y.end) for y in moves[i + 1 :]]
            out += [(x.rank, a, b) for a, b in subtract([(x.start, x.end)], later)]
        return tuple(sorted(out, key=lambda s: s[1]))

    def away(self) -> Spans:
        """The pieces on other ranks than the home, as their guests hold them."""
        return tuple(s for s in self.pieces() if s[0] != self.home)

    def held(self, rank: int) -> list[tuple[int, int]]:
        """``(start, end)`` of the pieces on ``rank``, by start (a guest's slots in this order)."""
        return [(a, b) for r, a, b in self.pieces() if r == rank]

    def skip_rows(self) -> list[tuple[int, int]]:
        """The home row's ranges its release must not free: away, or kept as pieces."""
        kept = [(x.start, x.end) for x in self.ranges if x.state == KEPT]
        return sorted([*((a, b) for _, a, b in self.away()), *kept])


# ---- range algebra ----------------------------------------------------------------------------


def reassign(shards: Sequence[tuple[int, int, int]], start: int, end: int, rank: int) -> Spans:
    """``shards`` ((rank, start, end) tiling a request's KV in token order) with tokens
    ``[start, end)`` on ``rank``; adjacent pieces on one rank are merged."""
    out: list[list[int]] = []

    def put(r: int, a: int, b: int) -> None:
        if out and out[-1][0] == r and out[-1][2] == a:
            out[-1][2] = b
        else:
            out.append([r, a, b])

    placed = False
    for r, a, b in shards:
        if b <= start or end <= a:
            if not placed and a >= end:
                put(rank, start, end)
                placed = True
            put(r, a, b)
            continue
        if a < start:
            put(r, a, start)
        if not placed:
            put(rank, start, end)
            placed = True
        if end < b:
            put(r, end, b)
    if not placed:
        raise ValueError(f"tokens [{start}, {end}) lie outside the request's KV {list(shards)}")
    return tuple(tuple(s) for s in out)


def where_now(home: int, moved: Sequence[tuple[int, int, int]], seq_len: int) -> Spans:
    """Ranges (rank, start, end) covering ``[0, seq_len)``: each range in ``moved`` ((rank,
    start, end), in the order the moves happened: sealed shards shipped at the first decode
    step, a prefill's chunk pieces, ranges migrated later; clipped to ``seq_len``) on its rank,
    every other token on ``home``; adjacent ranges of one rank merged; the last range is the
    home's (its tail, empty when every token moved)."""
    pieces = sorted((a, min(b, seq_len), r) for r, a, b in moved if a < min(b, seq_len))
    if any(pieces[i][1] > pieces[i + 1][0] for i in range(len(pieces) - 1)):
        # a range moved again (a migration): apply the moves in the order they happened
        out: Spans = ((home, 0, seq_len),) if seq_len else ()
        for r, a, b in moved:
            if a < min(b, seq_len):
                out = reassign(out, a, min(b, seq_len), r)
    else:  # disjoint pieces (the common case): one pass in token order
        runs: list[list[int]] = []
        pos = 0
        for a, b, r in (*pieces, (seq_len, seq_len, home)):
            for rr, x, y in ((home, pos, a), (r, a, b)):
                if y <= x:
                    continue
                if runs and runs[-1][0] == rr and runs[-1][2] == x:
                    runs[-1][2] = y
                else:
                    runs.append([rr, x, y])
            pos = b
        out = tuple(tuple(x) for x in runs)
    if not out or out[-1][0] != home:  # the last range is the home's tail, even empty
        out = (*out, (home, seq_len, seq_len))
    return tuple(tuple(s) for s in out)


def runtime_shards(placement, moved: Sequence[tuple[int, int, int]], seq_len: int) -> Spans:
    """``KvLayout.of(placement, moved).shards(seq_len)``: where a home request's KV is."""
    return KvLayout.of(placement, moved).shards(seq_len)


def subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` minus ``cut`` (half-open, ascending)."""
    out = []
    for a, b in ranges:
        pieces = [(a, b)]
        for c, d in sorted(cut):
            nxt = []
            for x, y in pieces:
                if d <= x or y <= c:
                    nxt.append((x, y))
                    continue
                if x < c:
                    nxt.append((x, c))
                if d < y:
                    nxt.append((d, y))
            pieces = nxt
        out.extend(pieces)
    return out
