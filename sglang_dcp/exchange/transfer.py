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
from sglang_dcp.exchange.move_staging import DEFAULT_CHUNK_MB, MoveStaging, checksum, schedule
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


def _layers(stack) -> list[torch.Tensor]:
    """Per-layer ``[num_slots, heads, dim]`` buffers of a pool's ``k``/``v`` (a ``LayerStack``
    of SGLang's buffers, or one ``[num_layers, num_slots, heads, dim]`` tensor)."""
    layers = getattr(stack, "layers", None)
    return list(layers) if layers is not None else list(stack.unbind(0))


def _pack(k_layers, v_layers, slots: torch.Tensor, out: torch.Tensor) -> None:
    """Every layer's K then V of ``slots`` into the byte buffer ``out`` (``[L, n, H, D]`` then
    ``[L, n, H, Dv]``), one ``index_select`` per layer, no temporary."""
    pos, n = 0, slots.numel()
    for buf in (*k_layers, *v_layers):
        nb = n * buf[0].numel() * buf.element_size()
        if nb:
            view = out[pos : pos + nb].view(buf.dtype).view(n, *buf.shape[1:])
            torch.index_select(buf, 0, slots, out=view)
        pos += nb


def _unpack(k_layers, v_layers, slots: torch.Tensor, src: torch.Tensor) -> None:
    pos, n = 0, slots.numel()
    for buf in (*k_layers, *v_layers):
        nb = n * buf[0].numel() * buf.element_size()
        if nb:
            buf.index_copy_(0, slots, src[pos : pos + nb].view(buf.dtype).view(n, *buf.shape[1:]))
        pos += nb


def transfer_shards(
    comm: Communicator,
    pool: KVPool,
    moves: Sequence[ShardMove],
    *,
    fault: FaultHook | None = None,
    staging: MoveStaging | None = None,
) -> list[TransferResult]:
    """Run ``moves`` (the same list on every rank); returns one result per move, in order.

    Bytes go in pieces through ``staging`` (the rank's reserved buffers; ``None``: a set of
    ``DEFAULT_CHUNK_MB`` for this call only, as tests and self-checks use). Host syncs: two per
    call whatever the number of moves (the gathered status, the gathered confirmations)."""
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
    if staging is None:
        staging = MoveStaging(DEFAULT_CHUNK_MB << 20, dev)
    k_layers, v_layers = _layers(pool.k), _layers(pool.v)

    # 1. sender finds its range and checksums it, receiver allocates; everyone learns both
    # sides' status (wire.py §2). The checksums stay on the device.
    state = torch.zeros(M, MOVE_STATE_WIDTH, dtype=torch.int64, device=dev)
    src_key: dict[int, ShardKey] = {}
    src_splits: dict[int, list[tuple[ShardKey, ShardKey]]] = {}
    why: dict[int, str] = {}
    for i, m in enumerate(moves):
        if m.src == me:
            try:
                src_key[i], src_splits[i] = _cut(pool, m)
                state[i, MOVE_SRC_OK] = 1
                state[i, MOVE_CHECKSUM] = checksum(
                    k_layers, v_layers, pool.slot_tensor(src_key[i]), staging.send
                )
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
    gathered_dev = torch.zeros(W * M, MOVE_STATE_WIDTH, dtype=torch.int64, device=dev)
    comm.all_gather(gathered_dev, state)
    gathered_dev = gathered_dev.view(W, M, MOVE_STATE_WIDTH)
    gathered = gathered_dev.cpu()  # host sync 1 of 2: which moves go ahead
    ok = [
        bool(gathered[m.src, i, MOVE_SRC_OK]) and bool(gathered[m.dst, i, MOVE_DST_OK])
        for i, m in enumerate(moves)
    ]

    # 2. bytes move in rounds of bounded pieces (move_staging.schedule, the same on every rank)
    tok_bytes = sum(b[0].numel() * b.element_size() for b in (*k_layers, *v_layers))
    live = [i for i in range(M) if ok[i]]
    spans = [(i, moves[i].src, moves[i].dst, moves[i].end - moves[i].start) for i in live]
    for rnd in schedule(spans, tok_bytes=tok_bytes, chunk_bytes=staging.chunk_bytes):
        send = sorted((p for p in rnd if p.src == me), key=lambda p: p.dst)  # stable: move order
        recv = sorted((p for p in rnd if p.dst == me), key=lambda p: p.src)
        in_splits = [sum((p.b - p.a) * tok_bytes for p in send if p.dst == q) for q in range(W)]
        out_splits = [sum((p.b - p.a) * tok_bytes for p in recv if p.src == q) for q in range(W)]
        pos = 0
        for p in send:
            nb = (p.b - p.a) * tok_bytes
            slots = pool.slot_tensor(src_key[p.move])[p.a : p.b]
            _pack(k_layers, v_layers, slots, staging.send[pos : pos + nb])
            if failed(Phase.SEND, p.move):
                staging.send[pos : pos + nb].bitwise_xor_(1)  # flip a bit of every byte in flight
            pos += nb
        comm.all_to_all_single(
            staging.recv[: sum(out_splits)], staging.send[:pos], out_splits, in_splits
        )
        pos = 0
        for p in recv:
            nb = (p.b - p.a) * tok_bytes
            m = moves[p.move]
            slots = pool.slot_tensor((m.rid, m.start))[p.a : p.b]
            _unpack(k_layers, v_layers, slots, staging.recv[pos : pos + nb])
            pos += nb

    # 3. receiver confirms what it got matches the sender's checksum, on the device:
    # confirm[i] = (matched, its own checksum) for the reason of a mismatch
    confirm = torch.zeros(M, 2, dtype=torch.int64, device=dev)
    for i in live:
        m = moves[i]
        if m.dst != me:
            continue
        if failed(Phase.CONFIRM, i):
            why[i] = f"receiver {me}: injected fault before confirming"
            continue
        got = checksum(k_layers, v_layers, pool.slot_tensor((m.rid, m.start)), staging.recv)
        confirm[i, 1] = got
        confirm[i, 0] = got == gathered_dev[m.src, i, MOVE_CHECKSUM]
    confirmed = torch.zeros(W * M, 2, dtype=torch.int64, device=dev)
    comm.all_gather(confirmed, confirm)
    confirmed = confirmed.view(W, M, 2).cpu()  # host sync 2 of 2: which moves committed

    # 4. commit (sender frees) or roll back (receiver frees); the source is never touched on failure
    results = []
    for i, m in enumerate(moves):
        done = ok[i] and bool(confirmed[m.dst, i, 0])
        if m.src == me and i in src_key:
            if done:
                pool.free(src_key[i])
            else:
                _undo(pool, src_splits[i])  # the source ends exactly as it began
        if not done and m.dst == me and pool.has((m.rid, m.start)) and bool(gathered[me, i, MOVE_DST_OK]):
            pool.free((m.rid, m.start))
        if not done and ok[i] and i not in why:
            got, want = int(confirmed[m.dst, i, 1]), int(gathered[m.src, i, MOVE_CHECKSUM])
            why[i] = f"receiver {m.dst}: checksum {got} != sender's {want}"
        reason = "" if done else why.get(i, "failed on a peer")
        results.append(TransferResult(m, done, reason))
    return results
