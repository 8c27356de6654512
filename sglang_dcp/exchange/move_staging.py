"""Bounded pieces for shard moves: the staging buffers, the round schedule, the checksum.

A shard move copies every layer's K and V of a token range. Done at once, a 32k-token shard of a
GQA model is gigabytes of temporaries; here it goes in **pieces** of at most ``chunk_bytes``
through two staging buffers (``send``, ``recv``: ``chunk_bytes`` each) that are allocated once,
on the pool's device, before SGLang sizes its KV pool (``sglang/move_reserve.py``), so they are
inside ``--mem-fraction-static`` like the weights.

- ``schedule``: every rank derives the same rounds from the same moves; in a round no rank sends
  or receives more than ``chunk_bytes``, so one all-to-all per round fits the buffers;
- ``checksum``: every layer's K and V of a range, read in pieces through ``scratch`` (a staging
  buffer not in use at that moment), summed as integers over the raw bytes (an int32/int16/uint8
  view, so no float64 copy and no rounding: any flipped bit changes the sum), each token
  weighted by its place in the range (1, 2, ...) so the same bytes in another slot order give
  another sum. The result stays on the device (an int64 scalar); the caller gathers it.

Shapes: per-layer buffers ``[num_slots, heads, dim]``; ``slots`` an int64 device tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_CHUNK_MB = 32


class MoveStaging:
    """``send``/``recv``: ``[chunk_bytes]`` uint8 on ``device`` each, for the life of the rank."""

    def __init__(self, chunk_bytes: int, device: torch.device | str) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        self.device = torch.device(device)
        self.send = torch.zeros(chunk_bytes, dtype=torch.uint8, device=self.device)
        self.recv = torch.zeros(chunk_bytes, dtype=torch.uint8, device=self.device)

    @property
    def reserved_bytes(self) -> int:
        return 2 * self.chunk_bytes


@dataclass(frozen=True, slots=True)
class Piece:
    """Tokens ``[a, b)`` (relative to its move's start) of move ``move``."""

    move: int
    src: int
    dst: int
    a: int
    b: int


def schedule(
    spans: Sequence[tuple[int, int, int, int]], *, tok_bytes: int, chunk_bytes: int
) -> list[list[Piece]]:
    """Rounds of pieces for moves ``spans[i] = (index, src, dst, num_tokens)``: pieces of at most
    ``chunk_bytes // tok_bytes`` tokens, each round at most ``chunk_bytes`` sent and received per
    rank, pieces in move order. Pure: the same on every rank."""
    per = chunk_bytes // tok_bytes
    if per < 1:
        raise ValueError(
            f"one token of every layer's K and V is {tok_bytes} bytes, more than the shard-move "
            f"chunk of {chunk_bytes} bytes: raise --dcp-transfer-chunk-mb"
        )
    left = [Piece(i, s, d, a, min(a + per, n)) for i, s, d, n in spans for a in range(0, n, per)]
    rounds = []
    while left:
        sent: dict[int, int] = {}
        got: dict[int, int] = {}
        now, later = [], []
        for p in left:
            nb = (p.b - p.a) * tok_bytes
            if sent.get(p.src, 0) + nb <= chunk_bytes and got.get(p.dst, 0) + nb <= chunk_bytes:
                sent[p.src] = sent.get(p.src, 0) + nb
                got[p.dst] = got.get(p.dst, 0) + nb
                now.append(p)
            else:
                later.append(p)
        rounds.append(now)
        left = later
    return rounds


def _int_view(x: torch.Tensor) -> torch.Tensor:
    """``x [n, ...]`` (contiguous) as ``[n, m]`` integers over its raw bytes."""
    n = x.shape[0]
    b = x.reshape(n, -1).view(torch.uint8)
    width = b.shape[1]
    for dt, size in ((torch.int32, 4), (torch.int16, 2)):
        if width % size == 0:
            return b.view(dt)
    return b


def checksum(
    k_layers: Sequence[torch.Tensor],
    v_layers: Sequence[torch.Tensor],
    slots: torch.Tensor,
    scratch: torch.Tensor,
) -> torch.Tensor:
    """Device int64 scalar: sum over layers and tokens t (1-based) of ``t * (sum(K bytes) + 2 *
    sum(V bytes))`` of ``slots``, read at most ``scratch.numel()`` bytes at a time."""
    total = torch.zeros((), dtype=torch.int64, device=scratch.device)
    n = slots.numel()
    for weight, layers in ((1, k_layers), (2, v_layers)):
        for buf in layers:
            row = buf[0].numel() * buf.element_size()
            if row == 0:  # MLA's V: a zero-width view of the latent, which K already covers
                continue
            per = scratch.numel() // row
            if per < 1:
                raise ValueError(f"a {row}-byte KV row does not fit the {scratch.numel()}-byte chunk")
            for a in range(0, n, per):
                b = min(a + per, n)
                out = scratch[: (b - a) * row].view(buf.dtype).view(b - a, *buf.shape[1:])
                torch.index_select(buf, 0, slots[a:b], out=out)
                sums = _int_view(out).sum(dim=1, dtype=torch.int64)
                pos = torch.arange(a + 1, b + 1, dtype=torch.int64, device=scratch.device)
                total += weight * (sums * pos).sum()
    return total
