"""What a rank keeps per split request: ``HomeEntry`` at its home, ``GuestEntry`` on a rank
holding some of its KV (``datapath.RankRuntime.home`` / ``.guests``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(slots=True)
class HomeEntry:
    """A request homed here whose placement spans several ranks."""

    req: Any  # SGLang Req (its placement is ``req.dcp``)
    moved: list[tuple[int, int, int]] = field(default_factory=list)  # (rank, start, end) away
    failed: list[tuple[int, int, int]] = field(default_factory=list)  # moves that stayed home
    offered: int = 0  # tokens [0, offered) of its sealed shards were shipped (or tried)
    shipped: bool = False  # it decoded: later moves of its KV are migrations


@dataclass(slots=True)
class GuestEntry:
    """KV of a request homed on ``home`` held here: ``ranges`` in token order, ``slots`` their
    allocator slots concatenated in the same order."""

    home: int
    ranges: list[tuple[int, int]]
    slots: torch.Tensor
