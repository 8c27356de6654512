"""Bucketed exchange: a step's all-to-alls carry its bucket (the smallest holding its busiest peer
pair), not the engine's capacity, and give the same attention as a full-capacity run.

W ranks run in threads of one process over a lockstep communicator; every rank's
``StaticExchange`` runs each random step twice, at the largest bucket and at the step's own."""

import random
import threading

import pytest
import torch

from sglang_dcp.exchange.buffers import ExchangeShape
from sglang_dcp.exchange.comm import Communicator
from sglang_dcp.exchange.exchange import default_kernels
from sglang_dcp.exchange.route import build_routes, max_pair_items
from sglang_dcp.exchange.static import Slots, StaticExchange
from sglang_dcp.exchange.wire import (
    bucket_for, capacity_buckets, message_bytes, node_ranks, padded_items, step_wire_bytes,
)  # fmt: skip
from sglang_dcp.types import Placement, Shard

W, C, H, D, SLOTS = 3, 8, 2, 8, 400


class ThreadComm(Communicator):
    """All-to-all between W threads of one process (a barrier before and after the swap);
    records the byte size of every message it carries."""

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.s = rank, shared

    def all_to_all_single(self, out, inp, out_splits=None, in_splits=None) -> None:
        s = self.s
        s["inp"][self.rank] = inp
        s["sizes"].append(inp.numel() * inp.element_size())
        s["barrier"].wait()
        for p in range(W):
            out[p].copy_(s["inp"][p][self.rank])
        s["barrier"].wait()

    def all_gather(self, out, inp) -> None:
        raise NotImplementedError

    def barrier(self) -> None:
        self.s["barrier"].wait()


def _in_threads(run, n: int, arg) -> None:
    """``run(rank, arg)`` on ``n`` threads at once (the ranks of one exchange), joined."""
    ts = [threading.Thread(target=run, args=(r, arg)) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _attend(ex, comm, q, kv, n: int) -> torch.Tensor:
    """One layer's exchange of ``q [n, H, D]`` (home rows 0..n-1) on a loaded ``ex``."""
    attention, merge = default_kernels("torch")
    ex.scatter_rows(q, torch.arange(n))
    merged = ex.run(comm, *kv, sm_scale=0.3, attention=attention, merge=merge)
    return merged[:n].clone()


def _step(rng, world=W, rpn=0, min_reqs=1, min_len=2):
    """Random placements over ``world`` ranks and each rank's slots; ``rpn``: every shard on its
    home's node of ``rpn`` ranks."""
    ps, slots = [], [dict() for _ in range(world)]
    for i in range(rng.randrange(min_reqs, 7)):
        home, L = rng.randrange(world), rng.randrange(min_len, 60)
        node = node_ranks(home, world, rpn) if rpn else range(world)
        cut = sorted(rng.sample(range(1, L), min(2, L - 1)))
        bounds = [0, *cut, L]
        shards = [(rng.choice(node), a, b) for a, b in zip(bounds, bounds[1:])]
        shards[-1] = (home, *shards[-1][1:])
        ps.append(Placement(f"r{i}", home, tuple(Shard(*x) for x in shards)))
        for r in range(world):
            n = sum(b - a for rr, a, b in shards if rr == r)
            if n:
                slots[r][f"r{i}"] = Slots([torch.tensor(rng.sample(range(SLOTS), n))])
    return ps, slots


@pytest.mark.parametrize("seed", [0, 1])
def test_each_bucket_gives_the_full_capacity_result_and_ships_its_own_size(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    shape = ExchangeShape(num_ranks=W, max_local=8, capacity=C, num_q_heads=H, head_dim=D,
                          v_head_dim=D, max_kv_slots=2048)  # fmt: skip
    kv = [(torch.randn(SLOTS, 1, D), torch.randn(SLOTS, 1, D)) for _ in range(W)]
    shared = {"inp": [None] * W, "sizes": [], "barrier": threading.Barrier(W)}
    exs = [StaticExchange(shape, "cpu", num_row_keys=16) for _ in range(W)]
    seen = set()
    for step in range(12):
        ps, slots = _step(rng)
        routes = build_routes(ps, num_ranks=W, slots=slots)
        pair = max_pair_items(ps, W)
        if pair > C or any(r.batch_size > 8 for r in routes):
            continue
        bucket = bucket_for(pair, C)
        seen.add(bucket)
        q = [torch.randn(r.batch_size, H, D) for r in routes]
        out = {}

        def run(rank, b):
            ex = exs[rank]
            ex.load(routes[rank], rounds=1, tag=step, row_keys=range(routes[rank].batch_size),
                    bucket=b)  # fmt: skip
            out[(rank, b)] = _attend(ex, ThreadComm(rank, shared), q[rank], kv[rank],
                                     routes[rank].batch_size)  # fmt: skip

        for b in (C, bucket):
            shared["sizes"] = []
            _in_threads(run, W, b)
            q_msg, out_msg = message_bytes(bucket=b, q_row_bytes=H * D * 4, o_row_bytes=H * D * 4,
                                           lse_row_bytes=H * 4)  # fmt: skip
            assert sorted(set(shared["sizes"])) == sorted({W * q_msg, W * out_msg})
        for r in range(W):
            torch.testing.assert_close(out[(r, bucket)], out[(r, C)], rtol=0, atol=0)
    assert len(seen) >= 2, seen


def test_step_wire_bytes_counts_buckets_rounds_and_items():
    assert capacity_buckets(16) == (1, 2, 4, 8, 16) and capacity_buckets(12)[-1] == 12
    assert bucket_for(3, 16) == 4 and bucket_for(0, 16) == 1 and bucket_for(40, 16) == 16
    pairs = [[0, 1, 1], [0, 0, 0], [0, 3, 0]]  # rank 2 sends 3 to rank 1: bucket 4
    got = step_wire_bytes(pairs, capacity=16, q_row_bytes=100, o_row_bytes=60, lse_row_bytes=8)
    q_msg, out_msg = message_bytes(bucket=4, q_row_bytes=100, o_row_bytes=60, lse_row_bytes=8)
    assert got["bucket"] == 4 and got["rounds"] == 1
    assert got["busiest_rank_wire_bytes"] == 2 * (q_msg + out_msg)
    assert got["wire_bytes"] == 3 * got["busiest_rank_wire_bytes"]
    assert got["item_bytes"] == 5 * 168 + 3 * 2 * 16  # 5 items, 3 messages carry items
    rounds = step_wire_bytes(pairs, capacity=2, q_row_bytes=100, o_row_bytes=60, lse_row_bytes=8)
    assert rounds["rounds"] == 2 and rounds["bucket"] == 2
    assert step_wire_bytes([[0] * 3] * 3, capacity=4, q_row_bytes=1, o_row_bytes=1,
                           lse_row_bytes=1)["wire_bytes"] == 0  # fmt: skip
    # what the simulator charges each rank: every peer a bucket per round
    assert padded_items(8, 0, 16) == 0 and padded_items(8, 1, 16) == 7
    assert padded_items(8, 3, 16) == 7 * 4 and padded_items(8, 40, 16) == 3 * 7 * 16

    # scopes: no pair across nodes ships each rank's node only (2 per node here)
    intra = [[0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    node = step_wire_bytes(intra, capacity=16, q_row_bytes=100, o_row_bytes=60, lse_row_bytes=8,
                           ranks_per_node=2)  # fmt: skip
    flat = step_wire_bytes(intra, capacity=16, q_row_bytes=100, o_row_bytes=60, lse_row_bytes=8)
    assert node["scope"] == "node" and flat["scope"] == "all"
    assert node["busiest_rank_wire_bytes"] * 3 == flat["busiest_rank_wire_bytes"]
    intra[0][2] = 1  # one pair across nodes: every rank again
    assert step_wire_bytes(intra, capacity=16, q_row_bytes=1, o_row_bytes=1, lse_row_bytes=1,
                           ranks_per_node=2)["scope"] == "all"  # fmt: skip
    assert padded_items(16, 3, 16, peers=7) == 7 * 4 and node_ranks(5, 6, 4) == (4, 5)


W4 = 4


class PeerComm(ThreadComm):
    """``ThreadComm`` over 4 ranks with the node-scoped all-to-all: a rank reads only its
    peers' chunks; records (sender, receiver) of every chunk that moves."""

    def all_to_all_single(self, out, inp, out_splits=None, in_splits=None) -> None:
        self.all_to_all_peers(out, inp, range(W4))

    def all_to_all_peers(self, out, inp, peers) -> None:
        s = self.s
        s["inp"][self.rank] = inp
        s["barrier"].wait()
        for p in peers:
            out[p].copy_(s["inp"][p][self.rank])
            if p != self.rank:
                with s["lock"]:
                    s["moved"].append((p, self.rank))
        s["barrier"].wait()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_node_scoped_step_gives_the_full_scope_result_and_ships_only_within_nodes(seed):
    """Two nodes of two ranks: a step whose split requests keep their shards on their home's
    node, run with ``peers`` = the rank's node, gives exactly the all-rank result; no chunk
    crosses nodes, and the chunks of the other node (poisoned) are never read. A route with an
    item off the node is refused at ``load``."""
    rng, rpn = random.Random(seed), 2
    torch.manual_seed(seed)
    shape = ExchangeShape(num_ranks=W4, max_local=8, capacity=C, num_q_heads=H, head_dim=D,
                          v_head_dim=D, max_kv_slots=2048)  # fmt: skip
    kv = [(torch.randn(SLOTS, 1, D), torch.randn(SLOTS, 1, D)) for _ in range(W4)]
    shared = {"inp": [None] * W4, "sizes": [], "moved": [], "lock": threading.Lock(),
              "barrier": threading.Barrier(W4)}
    exs = [StaticExchange(shape, "cpu", num_row_keys=16) for _ in range(W4)]
    done = 0
    for step in range(10):
        ps, slots = _step(rng, W4, rpn, min_reqs=2, min_len=4)
        routes = build_routes(ps, num_ranks=W4, slots=slots)
        pair = max_pair_items(ps, W4)
        if not pair or pair > C or any(r.batch_size > 8 for r in routes):
            continue
        q = [torch.randn(r.batch_size, H, D) for r in routes]
        out = {}

        def run(rank, scoped):
            ex = exs[rank]
            ex.load(routes[rank], rounds=1, tag=step, row_keys=range(routes[rank].batch_size),
                    bucket=bucket_for(pair, C),
                    peers=node_ranks(rank, W4, rpn) if scoped else None)  # fmt: skip
            if scoped:  # the other node's chunks: poison, never read
                other = [p for p in range(W4) if p not in node_ranks(rank, W4, rpn)]
                for t in (ex.bufs.q_recv, ex.bufs.r_recv):
                    t[other] = 0xFF  # NaN in every float view
            out[(rank, scoped)] = _attend(ex, PeerComm(rank, shared), q[rank], kv[rank],
                                          routes[rank].batch_size)  # fmt: skip

        for scoped in (False, True):
            shared["moved"] = []
            _in_threads(run, W4, scoped)
            crossed = [(a, b) for a, b in shared["moved"] if a // rpn != b // rpn]
            assert bool(crossed) != scoped, crossed
        for r in range(W4):
            assert not out[(r, True)].isnan().any()
            torch.testing.assert_close(out[(r, True)], out[(r, False)], rtol=0, atol=0)
        done += 1
    assert done >= 3
    far = Placement("x", 0, (Shard(2, 0, 8), Shard(0, 8, 12)))
    route = build_routes([far], num_ranks=W4, slots=[{"x": Slots([torch.arange(4)])}, {},
                                                     {"x": Slots([torch.arange(8)])}, {}])[0]
    with pytest.raises(ValueError, match=r"node-scoped step \(peers \(0, 1\)\) has items with "
                                         r"ranks \[2\]"):
        exs[0].load(route, rounds=1, tag=99, row_keys=[0], bucket=1, peers=(0, 1))
