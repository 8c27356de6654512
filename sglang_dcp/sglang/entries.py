"""What a rank keeps per split request: ``HomeEntry`` at its home, ``GuestEntry`` on a rank
holding some of its KV (``datapath.RankRuntime.home`` / ``.guests``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sglang_dcp.sglang.step import runtime_shards


@dataclass(slots=True)
class HomeEntry:
    """A request homed here whose placement spans several ranks."""

    req: Any  # SGLang Req (its placement is ``req.dcp``)
    moved: list[tuple[int, int, int]] = field(default_factory=list)  # (rank, start, end) away
    failed: list[tuple[int, int, int]] = field(default_factory=list)  # moves that stayed home
    offered: int = 0  # tokens [0, offered) of its sealed shards were shipped (or tried)
    shipped: bool = False  # it decoded: later moves of its KV are migrations
    _layout: tuple = ()  # runtime_shards of ``moved`` up to its end (cached; moved only grows)
    _layout_moves: int = -1  # len(moved) when _layout was computed

    def shards_at(self, seq_len: int) -> tuple[tuple[int, int, int], ...]:
        """``step.runtime_shards(req.dcp, moved, seq_len)``; O(1) per decode step while
        ``moved`` is unchanged (each step only lengthens the home's tail)."""
        p = self.req.dcp
        if self._layout_moves != len(self.moved):
            end = max([p.shards[-1].start, *(b for _, _, b in self.moved)])
            self._layout = runtime_shards(p, self.moved, end)
            self._layout_moves = len(self.moved)
        *head, (r, a, b) = self._layout  # the home's tail, possibly empty
        if seq_len < b:
            return runtime_shards(p, self.moved, seq_len)
        return (*head, (r, a, seq_len))


@dataclass(slots=True)
class GuestEntry:
    """KV of a request homed on ``home`` held here: ``ranges`` in token order, ``slots`` their
    allocator slots concatenated in the same order."""

    home: int
    ranges: list[tuple[int, int]]
    slots: torch.Tensor
