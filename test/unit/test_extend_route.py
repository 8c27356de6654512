"""Extend mode (prefill into shards): a chunk's rows as decode items; pure route + one-rank math."""

import math

import pytest
import torch

from sglang_dcp.exchange.buffers import ExchangeShape
from sglang_dcp.exchange.comm import LocalCommunicator
from sglang_dcp.exchange.exchange import default_kernels
from sglang_dcp.exchange.extend import (
    Chunk, build_extend_route, extend_placements, extend_slots, home_rows, row_placements,
    row_rid,
)  # fmt: skip
from sglang_dcp.exchange.extend_scenario import make_extend_scenario, ships_of
from sglang_dcp.exchange.route import build_rank_route, max_pair_items, num_rounds
from sglang_dcp.exchange.static import Slots, StaticExchange
from sglang_dcp.types import Placement, Shard

# request r: rank 0 [0, 4), rank 1 [4, 8), home 2 [8, 14)
P = Placement("r", 2, (Shard(0, 0, 4), Shard(1, 4, 8), Shard(2, 8, 14)))


def test_row_placements_clip_the_prefix_and_grow_the_chunk_at_home():
    rows = row_placements(Chunk(P, 6, 10))
    assert [p.rid for p in rows] == [row_rid("r", t) for t in range(6, 10)]
    for i, p in enumerate(rows):
        assert p.home_rank == 2
        assert p.shards == (Shard(0, 0, 4), Shard(1, 4, 6), Shard(2, 6, 7 + i))


def test_guest_rows_share_one_container_and_home_rows_are_causal():
    c = Chunk(P, 8, 12)
    guest = (10, 11, 12, 13)
    s1 = extend_slots([c], rank=0, slot_map={"r": guest})
    assert len(s1) == 4 and all(v is guest for v in s1.values())
    home = list(range(100, 104))  # the chunk's 4 slots; the home holds no prefix
    s2 = extend_slots([c], rank=2, slot_map={"r": home})
    assert [list(s2[row_rid("r", t)]) for t in range(8, 12)] == [home[: i + 1] for i in range(4)]
    with pytest.raises(ValueError, match="needs 0 prefix"):
        extend_slots([c], rank=2, slot_map={"r": home[:3]})
    with pytest.raises(ValueError, match="holds 4 tokens"):
        extend_slots([c], rank=1, slot_map={"r": (1, 2)})


def test_slots_head_is_views_across_pieces():
    a, b = torch.arange(5), torch.arange(10, 13)
    s = Slots([a, b])
    for n in range(9):
        h = s.head(n)
        flat = torch.cat([a[:0], *h.parts]).tolist()
        assert len(h) == n and flat == torch.cat([a, b])[:n].tolist()
    assert s.head(2).parts[0].data_ptr() == a.data_ptr()


def test_a_one_row_chunk_is_the_decode_route():
    grown = Placement("r", 2, P.shards[:2] + (Shard(2, 8, 15),))
    maps = [{"r": (1, 2, 3, 4)}, {"r": (5, 6, 7, 8)}, {"r": tuple(range(20, 27))}]
    for rank in range(3):
        dec = build_rank_route([grown], rank=rank, num_ranks=3, local_slots=maps[rank])
        ext = build_extend_route([Chunk(grown, 14, 15)], rank=rank, num_ranks=3,
                                 slot_map=maps[rank])
        assert (ext.send, ext.merge, ext.batch_size) == (dec.send, dec.merge, dec.batch_size)
        assert [[g.slots for g in r] for r in ext.recv] == [[g.slots for g in r] for r in dec.recv]
        assert ext.local_slots == dec.local_slots


def test_rows_count_against_capacity():
    other = Placement("s", 0, (Shard(2, 0, 8), Shard(0, 8, 9)))
    chunks = [Chunk(P, 8, 14), Chunk(other, 8, 9)]
    rows = extend_placements(chunks)
    assert len(rows) == 7 and max_pair_items(rows, 3) == 6
    assert num_rounds(rows, 3, 4) == 2
    assert home_rows(chunks, 2) == [("r", t) for t in range(8, 14)]
    with pytest.raises(ValueError, match="two chunks"):
        extend_placements([Chunk(P, 8, 10), Chunk(P, 10, 12)])


def test_scenario_ships_each_chunk_off_home_and_covers_the_cases():
    reqs, steps = make_extend_scenario(4, 5)
    degrees = {r.placement.degree for r in reqs}
    assert 1 in degrees and 4 in degrees
    assert all(r.placement.home_rank != 3 for r in reqs)
    assert any(len(s.chunks) > 1 and {c.num_rows for c in s.chunks} >= {1, 8} for s in steps)
    for r in reqs:  # every token not on home is shipped exactly once, page-aligned
        p = r.placement
        want = sum(s.num_tokens for s in p.shards if s.rank != p.home_rank)
        ships = [m for s in steps for m in s.ships if m.rid == p.rid]
        assert sum(m.end - m.start for m in ships) == want
        assert all(m.start % 4 == 0 and m.end % 4 == 0 for m in ships)
    assert ships_of(Chunk(P, 0, 8)) != [] and ships_of(Chunk(P, 8, 12)) == []


def test_one_rank_chunks_equal_causal_float64():
    """W = 1: every row's attention is the home's causal part alone; checked against float64."""
    torch.manual_seed(0)
    H, Hkv, D, T = 4, 2, 8, 13
    k, v = torch.randn(T, Hkv, D), torch.randn(T, Hkv, D)
    q = torch.randn(T, H, D)
    p = Placement("r", 0, (Shard(0, 0, T),))
    perm = torch.randperm(40)[:T]  # scattered slots, token order
    kb = torch.full((40, Hkv, D), math.nan)
    vb = torch.full((40, Hkv, D), math.nan)
    kb[perm], vb[perm] = k, v
    shape = ExchangeShape(num_ranks=1, max_local=8, capacity=1, num_q_heads=H, head_dim=D,
                          v_head_dim=D, max_kv_slots=8 * T)
    ex = StaticExchange(shape, "cpu", num_row_keys=8)
    att, mrg = default_kernels("torch")
    got = torch.zeros(T, H, D)
    for a, b in ((0, 5), (5, 8), (8, 13)):
        route = build_extend_route([Chunk(p, a, b)], rank=0, num_ranks=1,
                                   slot_map={"r": Slots([perm[:b]])})
        ex.load(route, rounds=1, tag=a, row_keys=range(b - a))
        ex.scatter_rows(q[a:b], ex.row_index(torch.arange(b - a)))
        got[a:b] = ex.run(LocalCommunicator(), kb, vb, sm_scale=D**-0.5, attention=att,
                          merge=mrg)[: b - a]
    qd = q.double().view(T, Hkv, H // Hkv, D)
    s = torch.einsum("thgd,nhd->thgn", qd, k.double()) * D**-0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril()[:, None, None], -math.inf)
    ref = torch.einsum("thgn,nhd->thgd", s.softmax(-1), v.double()).reshape(T, H, D)
    assert float((got.double() - ref).abs().max()) < 1e-5
