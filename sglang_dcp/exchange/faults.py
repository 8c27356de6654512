"""Injected shard-move failures (testing only: ``SGLANG_DCP_INJECT_MOVE_FAILURE``, env.py).

A failed move must leave its range on the home and the planner's books must follow (the ledger,
``sglang/ledger.py``). To exercise that on a real server, ``move_faults`` builds the
``transfer_shards`` fault hook that fails a fraction of moves at one of the transfer's three
failure points (the receiver cannot allocate, the bytes arrive corrupted, the receiver does
not confirm). Which move fails, and where, is a hash of the move: every rank computes the
same answer without talking, and a rerun with the same request ids fails the same moves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sglang_dcp.exchange.transfer import FaultHook, Phase, ShardMove

PHASES = (Phase.ALLOCATE, Phase.SEND, Phase.CONFIRM)


def move_fault(move: ShardMove, probability: float) -> Phase | None:
    """Where the injected fault fails ``move`` (``None``: it does not)."""
    key = f"{move.rid}|{move.src}|{move.dst}|{move.start}|{move.end}".encode()
    digest = hashlib.sha256(key).digest()
    if int.from_bytes(digest[:8], "big") >= probability * 2.0**64:
        return None
    return PHASES[digest[8] % len(PHASES)]


def move_faults(
    moves: Sequence[ShardMove], probability: float, rid_rule: tuple[str, int] | None = None
) -> FaultHook | None:
    """The ``transfer_shards(fault=...)`` hook failing a ``probability`` fraction of ``moves``,
    and (``rid_rule = (prefix, token)``) every move of a rid starting with ``prefix`` that
    starts at ``token`` or later (``None`` when nothing is injected)."""
    if probability <= 0.0 and rid_rule is None:
        return None
    where = [move_fault(m, probability) if probability > 0.0 else None for m in moves]
    if rid_rule is not None:
        prefix, token = rid_rule
        where = [move_fault(m, 1.0) if m.rid.startswith(prefix) and m.start >= token else w
                 for m, w in zip(moves, where)]  # fmt: skip
    return lambda phase, i: where[i] is phase
