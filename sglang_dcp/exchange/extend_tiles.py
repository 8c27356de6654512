"""Extend mode by row tiles: a prefill chunk's query rows reach each shard rank as tiles.

Pure Python (no torch). A chunk ``[start, end)`` of a split request (``extend.Chunk``) attends to
``[0, start)``, part of which lives on other ranks. Here the chunk's ``R`` rows go to each shard
rank as one block, and the shard rank serves them as ``ceil(R / T)`` tiles of up to ``T`` rows
against its shard (``kernels.prefix_attention``, non-causal), so it reads its shard once per
tile, not once per row; the home computes its own part (its tokens of ``[0, start)`` then the
chunk, causal) once, with the same kernel, and merges the parts by LSE::

    chunk [8, 16) of r, shards: rank 0 [0, 4) | rank 1 [4, 8) | home 2 [8, ...)
    home 2:  rows 8..15 -> rank 0 and rank 1 (one block each), its own part: one causal tile
             over slots(8..15) (row t sees slots 8..t)
    rank 0:  one tile of 8 rows over slots(0..3);  rank 1: one tile over slots(4..7)
    home 2:  row t = merge(home part, rank 0's row t, rank 1's row t)

The rows a home sends a peer in one step are its chunks' blocks in plan order (a *stream* per
(home, peer) pair); every rank derives every stream's length from the plan alone, so the
per-peer capacity of each collective and the round count agree everywhere. A stream longer than
the reserved per-peer capacity ``C`` is cut into rounds of ``C`` rows (``round_span``): round
``k`` carries stream positions ``[k C, (k + 1) C)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sglang_dcp.exchange.extend import Chunk

DEFAULT_TILE_ROWS = 64  # rows per guest tile (issue 25: 64-128)


@dataclass(frozen=True, slots=True)
class HomeChunk:
    """A chunk homed on this rank: home rows ``[first, first + rows)``."""

    rid: str
    start: int
    rows: int
    held: int  # the home's own tokens of [0, start)
    first: int
    sent: tuple[tuple[int, int], ...]  # (peer, stream offset) per peer holding prefix tokens


@dataclass(frozen=True, slots=True)
class GuestChunk:
    """A chunk homed on ``src`` with ``held`` tokens of its prefix on this rank: its rows are
    ``src``'s stream to this rank at ``[offset, offset + rows)``."""

    rid: str
    src: int
    rows: int
    offset: int
    held: int


@dataclass(frozen=True, slots=True)
class TileRoute:
    """Rank ``rank``'s part of a step's chunks (the same plan on every rank)."""

    rank: int
    num_ranks: int
    tile_rows: int
    home: tuple[HomeChunk, ...]
    recv: tuple[tuple[GuestChunk, ...], ...]  # per peer: its chunks this rank serves
    send_rows: tuple[int, ...]  # per peer: length of this rank's stream to it
    max_stream: int  # the longest stream of any (home, peer) pair: all ranks agree

    @property
    def num_rows(self) -> int:
        return sum(c.rows for c in self.home)

    def num_rounds(self, capacity: int) -> int:
        return max(1, -(-self.max_stream // capacity))

    def kv_reads(self) -> dict[str, int]:
        """KV tokens this rank reads per layer: ``tiles`` as the kernel runs (each span once per
        tile; causal home tiles only up to their last row), ``ideal`` each span once
        (per chunk), ``per_row`` the old one-item-per-row route's."""
        T = self.tile_rows
        tiles = ideal = per_row = 0
        for c in self.home:
            span = c.held + c.rows
            for s in range(0, c.rows, T):
                tiles += min(span, c.held + min(s + T, c.rows))
            ideal += span
            per_row += c.rows * c.held + c.rows * (c.rows + 1) // 2
        for g in (g for r in self.recv for g in r):
            tiles += -(-g.rows // T) * g.held
            ideal += g.held
            per_row += g.rows * g.held
        return {"tiles": tiles, "ideal": ideal, "per_row": per_row}


def _peers(c: Chunk) -> tuple[tuple[int, int], ...]:
    """(rank, tokens of [0, start) it holds) of each non-home rank, shard order."""
    held: dict[int, int] = {}
    for s in c.prefix():
        if s.rank != c.home_rank:
            held[s.rank] = held.get(s.rank, 0) + s.num_tokens
    return tuple(held.items())


def build_tile_route(
    chunks: Sequence[Chunk], *, rank: int, num_ranks: int, tile_rows: int = DEFAULT_TILE_ROWS
) -> TileRoute:
    """``rank``'s tile route for a step's chunks (plan order). O(chunks x ranks)."""
    if tile_rows < 1:
        raise ValueError(f"tile_rows must be >= 1, got {tile_rows}")
    stream = [[0] * num_ranks for _ in range(num_ranks)]
    home: list[HomeChunk] = []
    recv: list[list[GuestChunk]] = [[] for _ in range(num_ranks)]
    first = 0
    seen: set[str] = set()
    for c in chunks:
        if c.rid in seen:
            raise ValueError(f"request {c.rid!r} has two chunks in one step")
        seen.add(c.rid)
        h = c.home_rank
        peers = _peers(c)
        sent = []
        for p, held in peers:
            if p == rank:
                recv[h].append(GuestChunk(c.rid, h, c.num_rows, stream[h][p], held))
            sent.append((p, stream[h][p]))
            stream[h][p] += c.num_rows
        if h == rank:
            own = sum(s.num_tokens for s in c.prefix() if s.rank == h)
            home.append(HomeChunk(c.rid, c.start, c.num_rows, own, first, tuple(sent)))
            first += c.num_rows
    return TileRoute(
        rank=rank, num_ranks=num_ranks, tile_rows=tile_rows, home=tuple(home),
        recv=tuple(tuple(r) for r in recv), send_rows=tuple(stream[rank]),
        max_stream=max((n for row in stream for n in row), default=0),
    )  # fmt: skip


def round_span(offset: int, rows: int, k: int, capacity: int) -> tuple[int, int]:
    """The rows ``[i0, i1)`` of a block at stream ``offset`` that round ``k`` carries (empty:
    ``i0 >= i1``)."""
    lo, hi = k * capacity, (k + 1) * capacity
    return max(0, lo - offset), min(rows, hi - offset)


def guest_tiles(g: GuestChunk, k: int, capacity: int, tile_rows: int) -> list[tuple[int, int]]:
    """(row in the round's received block, rows) of ``g``'s tiles in round ``k``."""
    i0, i1 = round_span(g.offset, g.rows, k, capacity)
    base = g.offset + i0 - k * capacity
    return [(base + s - i0, min(tile_rows, i1 - s)) for s in range(i0, i1, tile_rows)]


def home_tiles(c: HomeChunk, tile_rows: int) -> list[tuple[int, int, int]]:
    """(first home row, rows, KV positions its first row sees) of ``c``'s causal tiles: the span
    is the home's ``held`` prefix tokens then the chunk's, row ``i`` sees ``held + i + 1``."""
    return [(c.first + s, min(tile_rows, c.rows - s), c.held + s + 1)
            for s in range(0, c.rows, tile_rows)]  # fmt: skip
