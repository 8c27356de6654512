"""KV shard transfer: move sealed, page-aligned token ranges (every layer's K and V) between ranks.

Each move is a small state machine, run for a batch of moves at once by every rank together::

    PLANNED --receiver allocates--> ALLOCATED --bytes move--> SENT --receiver checks--> CONFIRMED
       |                               |                        |                          |
       no room / no source             fault                    checksum mismatch          sender
       +-------------------------------+------------------------+--> FAILED                frees
    FAILED: the receiver frees what it allocated; the source is untouched.

Used after prefill (home -> shard ranks) and for rebalancing (``planner.base.Migration``). The
sender may split one of its shards (metadata only, page-aligned) to cut out the moved range; a
failed move joins it back, so the source ends with the same shards, slots and bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from sglang_dcp.exchange.comm import Communicator
from sglang_dcp.exchange.kv_pool import KVPool, KVPoolFull, ShardKey
from sglang_dcp.exchange.wire import MOVE_CHECKSUM, MOVE_DST_OK, MOVE_SRC_OK, MOVE_STATE_WIDTH
from sglang_dcp.planner.base import Migration


class Phase(Enum):
    ALLOCATE = "allocate"  # receiver side
    SEND = "send"  # sender side, after the checksum: corrupts the bytes in flight
    CONFIRM = "confirm"  # receiver side


# fault(phase, move_index) -> True to make that phase fail on this rank (tests only)
FaultHook = Callable[[Phase, int], bool]


# Tokens ``[start, end)`` of ``rid`` from ``src`` to ``dst``: exactly the planner's Migration,
# which covers the ship-after-prefill case as well.
ShardMove = Migration


@dataclass(frozen=True, slots=True)
class TransferResult:
    move: ShardMove
    ok: bool
    reason: str = ""


def _cut(pool: KVPool, m: ShardMove) -> tuple[ShardKey, list[tuple[ShardKey, ShardKey]]]:
    """Make ``[m.start, m.end)`` one shard on the sender (splitting page-aligned). Returns its key
    and the splits made, as (left, right) pairs to ``join`` back if the move fails."""
    try:
        key = pool.key_at(m.rid, m.start)
    except KeyError:
        raise KeyError(f"rank {m.src} holds no shard of {m.rid!r} at token {m.start}") from None
    splits = []
    try:
        if key[1] < m.start:
            right = pool.split(key, m.start)
            splits.append((key, right))
            key = right
        if pool.num_tokens(key) > m.end - m.start:
            splits.append((key, pool.split(key, m.end)))
        if pool.num_tokens(key) != m.end - m.start:
            raise KeyError(f"rank {m.src}: tokens [{m.start}, {m.end}) of {m.rid!r} span shards")
    except (KeyError, ValueError):
        _undo(pool, splits)  # e.g. the second split is not page-aligned: source stays whole
        raise
    return key, splits


def _undo(pool: KVPool, splits: list[tuple[ShardKey, ShardKey]]) -> None:
    for left, right in reversed(splits):
        pool.join(left, right)


def _checksum(pool: KVPool, slots: torch.Tensor) -> float:
    """Every layer's K and V of the range summed per token, each token weighted by its place in
    the range (1, 2, ...): the same bytes in another slot order give another sum."""
    w = torch.arange(1, slots.numel() + 1, dtype=torch.float64, device=pool.k.device)
    k = pool.k[:, slots].double().sum(dim=(0, 2, 3))
    v = pool.v[:, slots].double().sum(dim=(0, 2, 3))
    return float((w * (k + 2 * v)).sum())


def transfer_shards(
    comm: Communicator,
    pool: KVPool,
    moves: Sequence[ShardMove],
    *,
    fault: FaultHook | None = None,
) -> list[TransferResult]:
    """Run ``moves`` (the same list on every rank); returns one result per move, in order."""
    me, W, M = comm.rank, comm.world_size, len(moves)
    if M == 0:
        return []
    dev = pool.k.device
    for m in moves:
        if m.src == m.dst or not (0 <= m.src < W and 0 <= m.dst < W) or m.end <= m.start:
            raise ValueError(f"bad move {m}")
    for i, a in enumerate(moves):
        for b in moves[i + 1 :]:
            if a.rid == b.rid and a.start < b.end and b.start < a.end:
                # a chained move would read slots that are allocated but not yet filled
                raise ValueError(f"moves {a} and {b} overlap; run them in separate batches")
    failed = fault or (lambda phase, i: False)

    # 1. sender finds its range, receiver allocates; everyone learns both sides' status
    state = torch.zeros(M, MOVE_STATE_WIDTH, dtype=torch.float64, device=dev)  # wire.py §2
    src_key: dict[int, ShardKey] = {}
    src_splits: dict[int, list[tuple[ShardKey, ShardKey]]] = {}
    why: dict[int, str] = {}
    for i, m in enumerate(moves):
        if m.src == me:
            try:
                src_key[i], src_splits[i] = _cut(pool, m)
                state[i, MOVE_SRC_OK] = 1
                state[i, MOVE_CHECKSUM] = _checksum(pool, pool.slot_tensor(src_key[i]))
            except (KeyError, ValueError) as e:
                why[i] = f"sender {me}: {e}"
        if m.dst == me:
            try:
                if failed(Phase.ALLOCATE, i):
                    raise KVPoolFull("injected fault")
                pool.allocate((m.rid, m.start), m.end - m.start)
                state[i, MOVE_DST_OK] = 1
            except (KVPoolFull, KeyError) as e:
                why[i] = f"receiver {me} cannot allocate: {e}"
    gathered = torch.zeros(W * M, MOVE_STATE_WIDTH, dtype=torch.float64, device=dev)
    comm.all_gather(gathered, state)
    gathered = gathered.view(W, M, MOVE_STATE_WIDTH).cpu()
    ok = [
        bool(gathered[m.src, i, MOVE_SRC_OK]) and bool(gathered[m.dst, i, MOVE_DST_OK])
        for i, m in enumerate(moves)
    ]

    # 2. bytes move: one uneven all_to_all of every layer's K and V, grouped by peer
    L, _, Hkv, D = pool.k.shape
    Dv = pool.v.shape[3]
    tok_bytes = L * Hkv * (D + Dv) * pool.k.element_size()
    live = [i for i in range(M) if ok[i]]
    if live:
        send = [i for p in range(W) for i in live if moves[i].src == me and moves[i].dst == p]
        recv = [i for p in range(W) for i in live if moves[i].dst == me and moves[i].src == p]

        def nbytes(i: int) -> int:
            return (moves[i].end - moves[i].start) * tok_bytes

        in_splits = [sum(nbytes(i) for i in send if moves[i].dst == p) for p in range(W)]
        out_splits = [sum(nbytes(i) for i in recv if moves[i].src == p) for p in range(W)]
        parts = []
        for i in send:
            slots = pool.slot_tensor(src_key[i])
            k = pool.k[:, slots].contiguous().view(torch.uint8).flatten()
            v = pool.v[:, slots].contiguous().view(torch.uint8).flatten()
            if failed(Phase.SEND, i):
                k = k ^ 1  # flip a bit of every byte in flight
            parts += [k, v]
        inp = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8, device=dev)
        out = torch.zeros(sum(out_splits), dtype=torch.uint8, device=dev)
        comm.all_to_all_single(out, inp, out_splits, in_splits)
        pos = 0
        for i in recv:
            m = moves[i]
            n = m.end - m.start
            slots = pool.slot_tensor((m.rid, m.start))
            kb = n * L * Hkv * D * pool.k.element_size()
            vb = n * L * Hkv * Dv * pool.v.element_size()
            pool.k[:, slots] = out[pos : pos + kb].view(pool.k.dtype).view(L, n, Hkv, D)
            pool.v[:, slots] = out[pos + kb : pos + kb + vb].view(pool.v.dtype).view(L, n, Hkv, Dv)
            pos += kb + vb

    # 3. receiver confirms what it got matches the sender's checksum
    confirm = torch.zeros(M, dtype=torch.float64, device=dev)
    for i in live:
        m = moves[i]
        if m.dst != me:
            continue
        want = float(gathered[m.src, i, MOVE_CHECKSUM])
        got = _checksum(pool, pool.slot_tensor((m.rid, m.start)))
        if failed(Phase.CONFIRM, i):
            why[i] = f"receiver {me}: injected fault before confirming"
        elif abs(got - want) > 1e-9 * max(1.0, abs(want)):
            why[i] = f"receiver {me}: checksum {got!r} != sender's {want!r}"
        else:
            confirm[i] = 1
    confirmed = torch.zeros(W * M, dtype=torch.float64, device=dev)
    comm.all_gather(confirmed, confirm)
    confirmed = confirmed.view(W, M).cpu()

    # 4. commit (sender frees) or roll back (receiver frees); the source is never touched on failure
    results = []
    for i, m in enumerate(moves):
        done = ok[i] and bool(confirmed[m.dst, i])
        if m.src == me and i in src_key:
            if done:
                pool.free(src_key[i])
            else:
                _undo(pool, src_splits[i])  # the source ends exactly as it began
        if not done and m.dst == me and pool.has((m.rid, m.start)) and bool(gathered[me, i, MOVE_DST_OK]):
            pool.free((m.rid, m.start))
        reason = "" if done else why.get(i, "failed on a peer")
        results.append(TransferResult(m, done, reason))
    return results
