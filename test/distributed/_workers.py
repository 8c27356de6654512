"""Spawn targets of the distributed tests (module level, importable: ``spawn`` pickles by name)."""

from __future__ import annotations

import torch

from sglang_dcp.exchange.comm import TorchDistCommunicator
from sglang_dcp.exchange.faults import move_faults
from sglang_dcp.exchange.kv_pool import KVPool
from sglang_dcp.exchange.spawn import init_rank
from sglang_dcp.exchange.transfer import Phase, ShardMove, transfer_shards

L, HKV, D, PAGE = 2, 2, 8, 4


def _pool(num_pages: int = 10) -> KVPool:
    return KVPool(num_layers=L, num_pages=num_pages, page_size=PAGE, num_kv_heads=HKV, head_dim=D)


def _content(rid: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Known KV of tokens [0, n) of ``rid``: [L, n, HKV, D] each; token t's values do not depend
    on n."""
    base = 100_000.0 * (ord(rid[0]) - ord("a") + 1)
    idx = torch.arange(L * n * HKV * D, dtype=torch.float32).view(L, n, HKV, D)
    k = base + idx % (n * HKV * D) + 10_000.0 * (idx // (n * HKV * D))
    return k, -k


def _fill(pool: KVPool, rid: str, n: int) -> None:
    pool.allocate((rid, 0), n)
    k, v = _content(rid, n)
    slots = pool.slot_tensor((rid, 0))
    pool.k[:, slots], pool.v[:, slots] = k, v


def _held(pool: KVPool, rid: str) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(first token, K, V) of the tokens of ``rid`` on this pool, concatenated in token order."""
    keys = [k for k in pool.keys() if k[0] == rid]
    slots = torch.tensor([s for k in keys for s in pool.slots(k)], dtype=torch.long)
    return (keys[0][1] if keys else -1), pool.k[:, slots], pool.v[:, slots]


def _expect(pool: KVPool, rid: str, start: int, end: int) -> None:
    first, k, v = _held(pool, rid)
    ek, ev = _content(rid, end)
    assert first == start and k.shape[1] == end - start, (rid, first, k.shape)
    assert torch.equal(k, ek[:, start:end]) and torch.equal(v, ev[:, start:end]), rid


def transfer_worker(rank: int, world_size: int, init_method: str, backend: str) -> None:
    comm = TorchDistCommunicator(init_rank(rank, world_size, init_method, backend))
    pool = _pool()
    if rank == 0:
        _fill(pool, "a", 12)  # 3 pages on rank 0
    if rank == 1:
        _fill(pool, "b", 8)
    free = pool.num_free_pages

    # every fault leaves the source whole and the receiver with nothing allocated
    for phase in Phase:
        move = ShardMove("a", 0, 1, 0, 8)
        res = transfer_shards(comm, pool, [move], fault=lambda ph, i: ph is phase)
        assert not res[0].ok, phase
        if rank == 0:
            assert pool.keys() == [("a", 0)]
            _expect(pool, "a", 0, 12)
        if rank == 1:
            assert [k for k in pool.keys() if k[0] == "a"] == [] and pool.num_free_pages == free
            assert phase.value in res[0].reason or "injected" in res[0].reason, res[0].reason

    # SGLANG_DCP_INJECT_MOVE_FAILURE=1 fails the move through the same handling
    res = transfer_shards(comm, pool, [ShardMove("a", 0, 1, 0, 8)],
                          fault=move_faults([ShardMove("a", 0, 1, 0, 8)], 1.0))  # fmt: skip
    assert not res[0].ok and pool.num_free_pages == free
    if rank == 0:
        _expect(pool, "a", 0, 12)

    # the receiver is full: nothing moves, the source keeps its shard as it was
    if rank == 1:
        pool.allocate(("filler", 0), PAGE * (pool.num_free_pages - 1))
    res = transfer_shards(comm, pool, [ShardMove("a", 0, 1, 0, 8)])
    assert not res[0].ok
    if rank == 0:
        assert pool.keys() == [("a", 0)]
        _expect(pool, "a", 0, 12)
    if rank == 1:
        assert "cannot allocate" in res[0].reason, res[0].reason
        pool.free(("filler", 0))
        assert pool.num_free_pages == free
    # a sender that does not hold the range
    res = transfer_shards(comm, pool, [ShardMove("zz", 0, 1, 0, 4)])
    assert not res[0].ok and (rank == 1 or "holds no shard" in res[0].reason), res

    # a batch: two moves succeed (one splits a page-aligned range out of a shard), one fails
    moves = [ShardMove("a", 0, 1, 4, 12), ShardMove("b", 1, 0, 0, 4), ShardMove("c", 0, 1, 0, 4)]
    res = transfer_shards(comm, pool, moves)
    assert [r.ok for r in res] == [True, True, False], res
    if rank == 0:
        _expect(pool, "a", 0, 4)
        first, k, _ = _held(pool, "b")
        assert first == 0 and torch.equal(k, _content("b", 8)[0][:, :4])
    if rank == 1:
        _expect(pool, "a", 4, 12)
        _expect(pool, "b", 4, 8)
    comm.barrier()


class FakeAllocator:
    """The two methods of SGLang's ``TokenToKVPoolAllocator`` the adapter uses (``alloc(n)``:
    slots or ``None`` when full; ``free(slots)``), with a leak/double-free check."""

    def __init__(self, size: int) -> None:
        self.free_slots = list(range(size - 1, 0, -1))  # slot 0 is SGLang's padding slot
        self.size = size

    def available_size(self) -> int:
        return len(self.free_slots)

    def alloc(self, n: int):
        if n > len(self.free_slots):
            return None
        return torch.tensor([self.free_slots.pop() for _ in range(n)], dtype=torch.int64)

    def free(self, slots) -> None:
        for s in slots.tolist():
            assert s not in self.free_slots, f"slot {s} freed twice"
            self.free_slots.append(s)


def sglang_adapter_worker(rank: int, world_size: int, init_method: str, backend: str) -> None:
    """``transfer_shards`` over SGLang-shaped pools (a list of per-layer buffers, an allocator)."""
    from sglang_dcp.sglang.kv_adapter import SGLangKVPool

    comm = TorchDistCommunicator(init_rank(rank, world_size, init_method, backend))
    size = 64
    k_layers = [torch.randn(size, HKV, D) for _ in range(L)]
    v_layers = [torch.randn(size, HKV, D) for _ in range(L)]
    alloc = FakeAllocator(size)
    # rank 0 holds 20 tokens of "a" at scattered slots, as a home's req_to_token row would
    row = alloc.alloc(20) if rank == 0 else None
    if rank == 0:
        row = row[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    sent_k = torch.stack([k[row[4:12]] for k in k_layers]) if rank == 0 else None
    sent_v = torch.stack([v[row[4:12]] for v in v_layers]) if rank == 0 else None

    def pool():
        return SGLangKVPool(alloc, k_layers, v_layers)

    # 1. the receiver cannot allocate: the move fails, the sender keeps its slots
    if rank == 1:
        hog = alloc.alloc(alloc.available_size() - 4)
    p = pool()
    if rank == 0:
        p.offer("a", 4, row[4:12])
    free_before = alloc.available_size()
    (res,) = transfer_shards(comm, p, [ShardMove("a", 0, 1, 4, 12)])
    assert not res.ok and ("cannot allocate" in res.reason if rank == 1 else True)
    assert alloc.available_size() == free_before and not p.freed
    if rank == 1:
        alloc.free(hog)

    # 2. success: exact bytes at the receiver's new slots, the sender's slots back in its pool
    p = pool()
    if rank == 0:
        p.offer("a", 4, row[4:12])
    free_before = alloc.available_size()
    (res,) = transfer_shards(comm, p, [ShardMove("a", 0, 1, 4, 12)])
    assert res.ok, res.reason
    if rank == 0:
        assert alloc.available_size() == free_before + 8 and p.freed == [("a", 4)]
    else:
        slots = p.slot_tensor(("a", 4))
        assert alloc.available_size() == free_before - 8 and slots.numel() == 8
        got_k = torch.stack([k[slots] for k in k_layers])
        got_v = torch.stack([v[slots] for v in v_layers])
        want = [torch.empty_like(got_k), torch.empty_like(got_v)]
        torch.distributed.recv(want[0], src=0)
        torch.distributed.recv(want[1], src=0)
        assert torch.equal(got_k, want[0]) and torch.equal(got_v, want[1])
    if rank == 0:
        torch.distributed.send(sent_k.contiguous(), dst=1)
        torch.distributed.send(sent_v.contiguous(), dst=1)
    torch.distributed.barrier()


def news_gather_worker(rank, world_size, init_method, backend, out_path, with_table):
    """Rank ``rank`` of ``test_news_gather``: ranks 0 and 2 have news the others cannot predict,
    rank 1 decodes as predicted; ``with_table``: SGLang's gathered table exists (else every rank
    sends its record after a length exchange). Writes what it gathered."""
    import json

    from sglang_dcp.planner.base import Migration
    from sglang_dcp.sglang.header import StepHeader, gather_news
    from sglang_dcp.sglang.step import Decoding, RankNews

    group = init_rank(rank, world_size, init_method, backend)
    DECODE = 2
    h = StepHeader(rank, world_size)
    h.last[1] = (Decoding("b-1", 1, ((2, 0, 64), (1, 64, 70))),)  # every rank remembers rank 1
    mine = {
        0: RankNews(moves=[Migration("a/é", 0, 2, 0, 128)], releases=["gone"],
                    decoding=[Decoding("a/é", 0, ((2, 0, 128), (0, 128, 131)))]),  # fmt: skip
        1: RankNews(decoding=list(h.predicted(1))),
        2: RankNews(releases=["x" * 100]),
    }[rank]
    h.set_news(mine, decoding_here=rank != 2)
    rows = [torch.tensor([0, 0, 0, 0, 0, DECODE, 0, 0, 0, h.flag, len(h.words)])]
    if with_table:
        table = [torch.zeros(11, dtype=torch.int64) for _ in range(world_size)]
        torch.distributed.all_gather(table, rows[0], group=group)
        h.gathered = torch.stack(table)
    news = gather_news(h, mine, DECODE, group)
    with open(out_path.format(rank=rank), "w") as f:
        json.dump({"flag": h.flag, "words": len(h.words),
                   "news": [[[[m.rid, m.src, m.dst, m.start, m.end] for m in n.moves], n.releases,
                             [[d.rid, d.home, [list(s) for s in d.shards]] for d in n.decoding]]
                            for n in news]}, f)  # fmt: skip


def chunked_transfer_worker(rank: int, world_size: int, init_method: str, backend: str) -> None:
    """Moves much larger than the staging chunk (``move_staging``): pieces of 2 tokens, several
    rounds, both directions at once; the bytes arrive whole and a corrupted piece still fails
    its move."""
    from sglang_dcp.exchange.move_staging import MoveStaging

    comm = TorchDistCommunicator(init_rank(rank, world_size, init_method, backend))
    tok_bytes = L * HKV * 2 * D * 4
    staging = MoveStaging(2 * tok_bytes + 3, "cpu")  # 2 tokens a piece, not a whole number
    pool = _pool(num_pages=16)
    _fill(pool, "ab"[rank], 16)
    moves = [ShardMove("a", 0, 1, 4, 16), ShardMove("b", 1, 0, 0, 8)]
    res = transfer_shards(comm, pool, moves, staging=staging)
    assert [r.ok for r in res] == [True, True], res
    if rank == 0:
        _expect(pool, "a", 0, 4)
        first, k, v = _held(pool, "b")
        assert first == 0 and torch.equal(k, _content("b", 16)[0][:, :8])
    if rank == 1:
        _expect(pool, "a", 4, 16)
        _expect(pool, "b", 8, 16)
    res = transfer_shards(comm, pool, [ShardMove("a", 1, 0, 4, 16)], staging=staging,
                          fault=lambda ph, i: ph is Phase.SEND)  # fmt: skip
    assert not res[0].ok and "checksum" in res[0].reason, res
    if rank == 1:
        _expect(pool, "a", 4, 16)
    comm.barrier()


def peers_a2a_worker(rank, world_size, init_method, backend, out_path):
    """``TorchDistCommunicator.all_to_all_peers`` on gloo: nodes of 2 ranks; the other node's
    chunks of ``out`` keep their poison."""
    import json

    from sglang_dcp.exchange.wire import node_ranks

    comm = TorchDistCommunicator(init_rank(rank, world_size, init_method, backend))
    inp = torch.arange(world_size * 3, dtype=torch.float32).view(world_size, 3) + 100 * rank
    out = torch.full((world_size, 3), float("nan"))
    comm.all_to_all_peers(out, inp, node_ranks(rank, world_size, 2))
    with open(out_path.format(rank=rank), "w") as f:
        json.dump([[None if x != x else x for x in row] for row in out.tolist()], f)
