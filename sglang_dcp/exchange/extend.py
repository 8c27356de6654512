"""Extend mode: a chunk of new tokens attends to a prompt whose earlier part lives on other ranks.

Pure Python (no torch). With prefill into shards (issue 18), a request's prompt is prefilled in
chunks at its home; the KV of each finished chunk leaves for the rank the placement gives it, so
a later chunk's query rows must reach the ranks holding the earlier tokens. A chunk ``[start,
end)`` of request ``rid`` is ``end - start`` query rows; row ``t`` attends to tokens ``[0, t]``:

- on each shard rank holding tokens of ``[0, start)``: **non-causally** over all of them (every
  shard token precedes the chunk), giving a partial (o, lse) per row;
- at home: over its own tokens of ``[0, start)`` and the chunk's ``[start, t]`` (**causal**: the
  chunk's KV is written at home first, so row ``t`` sees exactly the chunk tokens up to itself);
- the home merges the parts by LSE, exactly as for a decode row.

This module defines a chunk as decode items: **one attention item per query row**. Row
``t`` becomes a row placement ``rid@t`` whose shards are the request's shards clipped to
``[0, start)`` plus ``[start, t + 1)`` on home; on a shard rank every row of the chunk shares
one slot container (the shard's slots, never copied), at home row ``t``'s slots are the home's
prefix slots followed by the chunk's first ``t - start + 1`` slots. ``build_rank_route``,
``num_rounds``, ``StaticExchange`` (buffers, rounds) and the kernels then run unchanged, and a
decode row is the one-row chunk ``[length - 1, length)``, so extend and decode rows share a step::

    chunk [8, 16) of r, shards: rank 0 [0, 4) | rank 1 [4, 8) | home 2 [8, ...)
    row r@8:   rank 0 slots(0..3) | rank 1 slots(4..7) | home slots(8)
    row r@9:   rank 0 slots(0..3) | rank 1 slots(4..7) | home slots(8..9)
    ...                 (shared container)     (shared)        (prefix of the chunk's slots)
    row r@15:  rank 0 slots(0..3) | rank 1 slots(4..7) | home slots(8..15)

Shapes at the exchange (``StaticExchange`` with ``max_local >= rows homed here``): ``q_in:
[rows, num_heads, head_dim]`` in ``home_rows`` order, out ``[rows, num_heads, v_head_dim]``,
lse ``[rows, num_heads]`` fp32 natural log.

The server does not run this row decomposition any more (issue 25): a guest item of ``R`` rows
over an ``S``-token shard read the shard ``R`` times and put ``R * S`` slot ids in
``kv_indices``. ``extend_tiles.py`` sends the chunk's rows to each shard rank as one block served
as row tiles (the shard read once per tile, ``S`` slot ids), and the home's causal part as tiles
too. The functions here remain the definition the tile route is checked against (a one-row
chunk is the decode route; ``StepPlan.rows`` lists the row placements).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sglang_dcp.exchange.route import RankRoute, build_rank_route, part_ranks
from sglang_dcp.types import Placement, Shard


@dataclass(frozen=True, slots=True)
class Chunk:
    """Query rows ``[start, end)`` of ``placement.rid`` in one forward.

    ``placement``: where the request's tokens live (its shards in token order); the tokens
    ``[0, start)`` must be where it says now (the earlier chunks shipped), the chunk's own KV is
    at home whatever rank will hold it later.
    """

    placement: Placement
    start: int
    end: int

    def __post_init__(self) -> None:
        p = self.placement
        if not 0 <= self.start < self.end:
            raise ValueError(f"chunk of {p.rid!r}: need 0 <= start < end, got "
                             f"[{self.start}, {self.end})")
        if p.shards[-1].end < self.start:
            raise ValueError(f"chunk of {p.rid!r} starts at {self.start}, past its placement's "
                             f"{p.shards[-1].end} tokens")

    @property
    def rid(self) -> str:
        return self.placement.rid

    @property
    def home_rank(self) -> int:
        return self.placement.home_rank

    @property
    def num_rows(self) -> int:
        return self.end - self.start

    def has_remote_prefix(self) -> bool:
        """Some of ``[0, start)`` lives on a rank other than the home (the chunk needs the
        exchange; otherwise the home's own attention sees the whole prefix)."""
        return any(s.rank != self.home_rank for s in self.prefix())

    def prefix(self) -> tuple[Shard, ...]:
        """The placement's shards clipped to ``[0, start)`` (empty ones dropped)."""
        return tuple(
            Shard(s.rank, s.start, min(s.end, self.start))
            for s in self.placement.shards
            if s.start < self.start and min(s.end, self.start) > s.start
        )


def row_rid(rid: str, token: int) -> str:
    """The exchange's name of query row ``token`` of request ``rid``."""
    return f"{rid}@{token}"


def row_placements(chunk: Chunk) -> tuple[Placement, ...]:
    """One placement per query row: the prefix shards, then ``[start, t + 1)`` on home."""
    pre, h = chunk.prefix(), chunk.home_rank
    return tuple(
        Placement(row_rid(chunk.rid, t), h, pre + (Shard(h, chunk.start, t + 1),))
        for t in range(chunk.start, chunk.end)
    )


def extend_placements(chunks: Sequence[Chunk]) -> list[Placement]:
    """Every row placement of a step, chunk after chunk: the same list on every rank, so
    ``num_rounds``/``max_pair_items`` over it agree everywhere."""
    seen: set[str] = set()
    out: list[Placement] = []
    for c in chunks:
        if c.rid in seen:
            raise ValueError(f"request {c.rid!r} has two chunks in one step")
        seen.add(c.rid)
        out.extend(row_placements(c))
    return out


def _head(slots, n: int):
    """The first ``n`` slots of a container (``Slots``-like objects cut with ``head``)."""
    head = getattr(slots, "head", None)
    return head(n) if head is not None else slots[:n]


def extend_slots(
    chunks: Sequence[Chunk], *, rank: int, slot_map: Mapping[str, Sequence[int]]
) -> dict[str, Sequence[int]]:
    """Per row rid: its KV slots on ``rank`` (the ``local_slots`` of ``build_rank_route``).

    ``slot_map[rid]``: this rank's slots of ``rid`` in token order: on a shard rank its tokens
    of ``[0, start)``; at home its own tokens of ``[0, start)`` followed by the chunk's ``end -
    start`` tokens (a sequence, a tensor, or a container with ``head(n)`` and ``len``).
    """
    out: dict[str, Sequence[int]] = {}
    for c in chunks:
        held = sum(s.num_tokens for s in c.prefix() if s.rank == rank)
        got = slot_map.get(c.rid)
        if rank == c.home_rank:
            want = held + c.num_rows
            if got is None or len(got) != want:
                raise ValueError(
                    f"rank {rank}: home of {c.rid!r} needs {held} prefix + {c.num_rows} chunk "
                    f"slots, has {None if got is None else len(got)}"
                )
            for i, t in enumerate(range(c.start, c.end)):
                out[row_rid(c.rid, t)] = _head(got, held + i + 1)
        elif held:
            if got is None or len(got) != held:
                raise ValueError(
                    f"rank {rank}: holds {held} tokens of {c.rid!r} before {c.start}, slot map "
                    f"has {None if got is None else len(got)}"
                )
            for t in range(c.start, c.end):
                out[row_rid(c.rid, t)] = got  # one container shared by every row
    return out


def build_extend_route(
    chunks: Sequence[Chunk],
    *,
    rank: int,
    num_ranks: int,
    slot_map: Mapping[str, Sequence[int]],
    placements: Sequence[Placement] | None = None,
) -> RankRoute:
    """Route of ``rank`` for a step of chunks: home rows are this rank's chunks' rows, in chunk
    and token order (``home_rows``). ``placements``: ``extend_placements(chunks)`` when the
    caller has it already."""
    rows = extend_placements(chunks) if placements is None else placements
    parts = {p.rid: part_ranks(p) for p in rows}
    return build_rank_route(
        rows,
        rank=rank,
        num_ranks=num_ranks,
        local_slots=extend_slots(chunks, rank=rank, slot_map=slot_map),
        parts=parts,
    )


def home_rows(chunks: Sequence[Chunk], rank: int) -> list[tuple[str, int]]:
    """``(rid, token)`` of each home row of ``rank``, in the route's order."""
    return [(c.rid, t) for c in chunks if c.home_rank == rank for t in range(c.start, c.end)]
