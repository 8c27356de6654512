"""What a rank keeps per split request: ``HomeEntry`` at its home, ``GuestEntry`` on a rank
holding some of its KV (``datapath.RankRuntime.home`` / ``.guests``). Where the KV is lives in
each entry's ``layout`` (``layout.KvLayout``), nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sglang_dcp.sglang.layout import KvLayout, Spans


@dataclass(slots=True)
class HomeEntry:
    """A request homed here whose placement spans several ranks (``req.dcp``)."""

    req: Any  # SGLang Req (its placement is ``req.dcp``)
    layout: KvLayout | None = None  # None: the placement's, nothing moved yet
    shipped: bool = False  # it decoded: later moves of its KV are migrations
    _cache: tuple = (None, ())  # (layout.ranges, its shards up to layout.end)

    def __post_init__(self) -> None:
        if self.layout is None:
            self.layout = KvLayout.of(self.req.dcp)

    def shards_at(self, seq_len: int) -> Spans:
        """``layout.shards(seq_len)``; O(1) per decode step while no range moves (each step
        only lengthens the home's tail)."""
        lay = self.layout
        if self._cache[0] is not lay.ranges:
            self._cache = (lay.ranges, lay.shards(lay.end))
        *head, (r, a, b) = self._cache[1]  # the home's tail, possibly empty
        if seq_len < b:
            return lay.shards(seq_len)
        return (*head, (r, a, seq_len))


@dataclass(slots=True)
class GuestEntry:
    """KV of a request held here (``rank``): ``layout.held(rank)`` in token order, ``slots``
    their allocator slots concatenated in the same order (``[tokens held]`` int64 on the pool's
    device)."""

    layout: KvLayout
    rank: int
    slots: torch.Tensor

    @classmethod
    def new(cls, rid: str, home: int, rank: int, spans, slots: torch.Tensor) -> GuestEntry:
        """``spans``: (start, end) ranges now held on ``rank``, in token order."""
        return cls(KvLayout(rid, home).with_moves((rank, a, b) for a, b in spans), rank, slots)

    @property
    def home(self) -> int:
        return self.layout.home

    def parts(self) -> list[tuple[tuple[int, int], torch.Tensor]]:
        """((start, end), its slots) per range held here, in token order (views of ``slots``)."""
        out, pos = [], 0
        for a, b in self.layout.held(self.rank):
            out.append(((a, b), self.slots[pos : pos + b - a]))
            pos += b - a
        return out
