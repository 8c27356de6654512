"""One decode step's DCP plan, built identically on every rank from what the step header gathered.

Pure Python (no SGLang, no torch.distributed). The header (``datapath.py``) gathers from every
rank, in rank order, a ``RankNews``: the shard moves its home requests start this step, the
requests whose guest KV may be freed, and the DCP requests it decodes this step with where their
KV will be once the moves succeed. ``plan_step`` turns that, plus the transfer results (the same
list on every rank), into the step's runtime placements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sglang_dcp.exchange.extend import Chunk, extend_placements
from sglang_dcp.exchange.route import max_pair_items, part_ranks
from sglang_dcp.exchange.wire import decode_news, encode_news
from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang.layout import reassign
from sglang_dcp.types import Placement, Shard


@dataclass(frozen=True, slots=True)
class Decoding:
    """A DCP request decoded by its home this step: KV tokens ``[0, seq_len)``, with ``shards``
    (rank, start, end) in token order as they will be after this step's moves (the home's tail
    ends at ``seq_len``, the new token included)."""

    rid: str
    home: int
    shards: tuple[tuple[int, int, int], ...]

    def placement(self) -> Placement:
        return Placement(self.rid, self.home, tuple(Shard(*s) for s in self.shards))


@dataclass(frozen=True, slots=True)
class Extending:
    """A prefill chunk ``[start, end)`` of a split request this step (prefill into shards):
    ``shards`` (rank, start, end) cover ``[0, end)`` as they are at the forward (earlier chunks'
    pieces on their ranks, the chunk at home)."""

    rid: str
    home: int
    shards: tuple[tuple[int, int, int], ...]
    start: int
    end: int

    def chunk(self) -> Chunk:
        p = Placement(self.rid, self.home, tuple(Shard(*s) for s in self.shards))
        return Chunk(p, self.start, self.end)


def _mig(m) -> tuple:
    return (m.rid, m.src, m.dst, m.start, m.end)


@dataclass(slots=True)
class RankNews:
    """What one rank tells every other rank at a step header. ``moves`` run before this step's
    forward, ``after`` right after it (the pieces of this step's prefill chunks that belong
    to other ranks)."""

    moves: list[Migration] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)  # rids homed here that ended
    decoding: list[Decoding] = field(default_factory=list)  # in batch order
    extending: list[Extending] = field(default_factory=list)  # in batch order
    after: list[Migration] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.moves or self.releases or self.decoding or self.extending or self.after)

    def to_words(self) -> list[int]:
        """This news as int64 words (``exchange/wire.py`` §3: fixed-size records, no pickle)."""
        return encode_news({
            "moves": [_mig(m) for m in self.moves],
            "releases": self.releases,
            "decoding": [(d.rid, d.home, d.shards) for d in self.decoding],
            "extending": [(e.rid, e.home, e.shards, e.start, e.end) for e in self.extending],
            "after": [_mig(m) for m in self.after],
        })  # fmt: skip

    @classmethod
    def from_words(cls, words) -> "RankNews":
        n = decode_news(words)
        return cls(
            moves=[Migration(*m) for m in n["moves"]],
            releases=n["releases"],
            decoding=[Decoding(*d) for d in n["decoding"]],
            extending=[Extending(*e) for e in n["extending"]],
            after=[Migration(*m) for m in n["after"]],
        )


@dataclass(frozen=True, slots=True)
class StepPlan:
    """The step every rank agrees on."""

    placements: tuple[Placement, ...]  # DCP requests decoded this step, rank order, batch order
    failed: tuple[Migration, ...]  # moves of this step that did not happen (KV stayed home)
    chunks: tuple[Chunk, ...] = ()  # prefill chunks whose prefix is partly on other ranks
    after: tuple[Migration, ...] = ()  # chunk pieces every rank ships after the forward

    @property
    def active(self) -> bool:
        """Some request has KV on a rank other than its home: every rank joins every layer's
        exchange this step."""
        return bool(self.chunks) or any(len(part_ranks(p)) > 1 for p in self.placements)

    def rows(self) -> list[Placement]:
        """The exchange's placements: split decode requests, then one per chunk query row
        (``exchange.extend``), the same list on every rank."""
        split = [p for p in self.placements if len(part_ranks(p)) > 1]
        return split + extend_placements(self.chunks)

    def capacity(self, num_ranks: int) -> int:
        """Queries one rank sends one peer per layer (the same on every rank)."""
        return max(1, max_pair_items(self.rows(), num_ranks))


def plan_step(news: Sequence[RankNews], failed: Sequence[Migration]) -> StepPlan:
    """Runtime placements of this step from every rank's news (which assumed its moves would
    succeed), a failed move's range staying where it was (``failed``: the moves
    ``transfer_shards`` could not complete; the source is untouched)."""
    bad: dict[str, list[Migration]] = {}
    for m in failed:
        bad.setdefault(m.rid, []).append(m)
    out = []
    for n in news:
        for d in n.decoding:
            shards = d.shards
            for m in bad.get(d.rid, ()):
                shards = reassign(shards, m.start, m.end, m.src)
            out.append(Placement(d.rid, d.home, tuple(Shard(*s) for s in shards)))
    chunks = tuple(
        c for n in news for c in (e.chunk() for e in n.extending) if c.has_remote_prefix()
    )
    after = tuple(m for n in news for m in n.after)
    return StepPlan(tuple(out), tuple(failed), chunks, after)
