"""Host staging of one step's exchange metadata (``static.StaticExchange``): a route's KV slots
as device tensor pieces (``Slots``), each bucket's staging layout, and the two pinned staging
sets a step alternates between.

Why two sets: the metadata goes to the device with non-blocking copies from pinned memory; on
a GPU such a copy may still be pending when the host prepares the next step (overlap
scheduling), so a set is rewritten only after the CUDA event recorded behind its copies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sglang_dcp.exchange.buffers import ExchangeBuffers


class Slots:
    """One item's KV slots on this rank as device tensor pieces in token order (views, never
    copied on the host); ``len()`` is the token count."""

    __slots__ = ("parts", "n")

    def __init__(self, parts: Sequence[torch.Tensor], n: int | None = None) -> None:
        self.parts = tuple(parts)  # a zero-length piece is harmless to torch.cat
        self.n = sum(p.numel() for p in self.parts) if n is None else n

    def __len__(self) -> int:
        return self.n

    def head(self, n: int) -> "Slots":
        """The first ``n`` slots, as views (extend mode: a chunk row's causal slots)."""
        parts, left = [], n
        for p in self.parts:
            if left <= 0:
                break
            parts.append(p[:left])
            left -= min(left, p.numel())
        return Slots(parts, min(n, self.n))


def pieces_of(slots) -> tuple[torch.Tensor, ...]:
    if isinstance(slots, Slots):
        return slots.parts
    if isinstance(slots, torch.Tensor):
        return (slots,) if slots.numel() else ()
    return (torch.tensor(list(slots), dtype=torch.long),) if len(slots) else ()


@dataclass(slots=True)
class Round:
    """One round's metadata: the host staging copy and its KV slot pieces."""

    stage: torch.Tensor
    pieces: tuple[torch.Tensor, ...]
    num_kv: int
    home_pieces: int = 0  # pieces[:home_pieces] are the home rows' (the rest: guest items)


@dataclass(slots=True)
class Layout:
    """One bucket: its buffers (views of the largest bucket's) and its staging offsets."""

    bucket: int
    bufs: ExchangeBuffers
    off: dict[str, int]
    stage_len: int


class StagingSet:
    """One of the two host staging sets: the step's metadata words and row table, pinned on
    CUDA; ``event`` marks when the device copies that read them have run."""

    def __init__(self, stage_len: int, num_row_keys: int, B: int, pin: bool) -> None:
        self.stage = torch.zeros(stage_len, dtype=torch.long, pin_memory=pin)
        self.rows = torch.full((num_row_keys,), B, dtype=torch.long, pin_memory=pin)
        self.keys: list[int] = []  # the keys ``rows`` maps (every other entry is ``B``)
        self.event = None


def layout_offsets(W: int, c: int, B: int) -> tuple[dict[str, int], int]:
    n = B + W * c
    off = {"send": 0, "lens": W * c, "merge": W * c + n, "counts": W * c + 2 * n,
           "hdr": W * c + 2 * n + B}  # fmt: skip
    return off, off["hdr"] + 4 * W  # hdr: [2 messages, W peers, (count, tag)]
