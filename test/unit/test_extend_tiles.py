"""Extend mode by row tiles (issue 25): the pure tile route, rounds, KV-read accounting, and the
tile exchange on one rank against float64 (several ranks: test/distributed/test_extend_selfcheck)."""

import math

import pytest
import torch

from sglang_dcp.exchange.comm import LocalCommunicator
from sglang_dcp.exchange.extend import Chunk
from sglang_dcp.exchange.extend_tiles import (
    GuestChunk, HomeChunk, build_tile_route, guest_tiles, home_tiles, round_span,
)  # fmt: skip
from sglang_dcp.exchange.tile_exchange import TileExchange, TileShape, merge_into
from sglang_dcp.kernels import prefix_attention
from sglang_dcp.types import Placement, Shard

# request r: rank 0 [0, 4), rank 1 [4, 8), home 2 [8, 14)
P = Placement("r", 2, (Shard(0, 0, 4), Shard(1, 4, 8), Shard(2, 8, 14)))
# request s: home 0, rank 2 [0, 8), home tail [8, 9)
S = Placement("s", 0, (Shard(2, 0, 8), Shard(0, 8, 9)))


def test_a_chunk_is_one_block_per_shard_rank():
    c = Chunk(P, 10, 14)  # the home holds [8, 10) of the prefix itself
    home = build_tile_route([c], rank=2, num_ranks=3, tile_rows=3)
    assert home.home == (HomeChunk("r", 10, 4, 2, 0, ((0, 0), (1, 0))),)
    assert home.send_rows == (4, 4, 0) and home.num_rows == 4 and home.max_stream == 4
    assert home_tiles(home.home[0], 3) == [(0, 3, 3), (3, 1, 6)]  # row i sees 2 + i + 1
    for rank, held in ((0, 4), (1, 4)):
        g = build_tile_route([c], rank=rank, num_ranks=3, tile_rows=3)
        assert g.home == () and g.recv[2] == (GuestChunk("r", 2, 4, 0, held),)
        assert guest_tiles(g.recv[2][0], 0, 4, 3) == [(0, 3), (3, 1)]


def test_streams_concatenate_chunks_in_plan_order():
    other = Placement("t", 2, (Shard(0, 0, 4), Shard(2, 4, 9)))
    chunks = [Chunk(P, 8, 14), Chunk(S, 8, 9), Chunk(other, 4, 9)]
    r0 = build_tile_route(chunks, rank=0, num_ranks=3)
    assert [g.offset for g in r0.recv[2]] == [0, 6]  # r then t, on the 2 -> 0 stream
    assert r0.home == (HomeChunk("s", 8, 1, 0, 0, ((2, 0),)),) and r0.send_rows == (0, 0, 1)
    r2 = build_tile_route(chunks, rank=2, num_ranks=3)
    assert r2.send_rows == (11, 6, 0) and r2.max_stream == 11 == r0.max_stream
    assert [c.first for c in r2.home] == [0, 6] and r2.num_rounds(4) == 3
    with pytest.raises(ValueError, match="two chunks"):
        build_tile_route([Chunk(P, 8, 10), Chunk(P, 10, 12)], rank=0, num_ranks=3)


@pytest.mark.parametrize("offset,rows,cap,tile", [(0, 10, 4, 3), (3, 7, 4, 2), (5, 1, 2, 64)])
def test_rounds_carry_every_row_once(offset, rows, cap, tile):
    g = GuestChunk("r", 1, rows, offset, 9)
    seen = []
    for k in range(-(-(offset + rows) // cap)):
        i0, i1 = round_span(offset, rows, k, cap)
        for row, n in guest_tiles(g, k, cap, tile):
            assert 0 <= row and row + n <= cap and 1 <= n <= tile
            seen += [k * cap + row + j - offset for j in range(n)]
        assert sum(n for _, n in guest_tiles(g, k, cap, tile)) == max(0, i1 - i0)
    assert seen == list(range(rows))


def test_kv_reads_once_per_tile_not_per_row():
    long = Placement("L", 1, (Shard(0, 0, 4096), Shard(1, 4096, 8192)))
    c = Chunk(long, 4096, 4096 + 512)
    g = build_tile_route([c], rank=0, num_ranks=2, tile_rows=64).kv_reads()
    assert g == {"tiles": 8 * 4096, "ideal": 4096, "per_row": 512 * 4096}
    h = build_tile_route([c], rank=1, num_ranks=2, tile_rows=512).kv_reads()
    assert h["tiles"] == h["ideal"] == 512 and h["per_row"] == 512 * 513 // 2


def test_merge_into_is_the_lse_merge_and_skips_empty_sides():
    o_run = torch.tensor([[[1.0, 2.0]], [[5.0, 5.0]], [[math.nan, 0.0]]])
    lse_run = torch.tensor([[0.0], [-math.inf], [-math.inf]])
    o_new = torch.tensor([[[3.0, 4.0]], [[7.0, 8.0]], [[math.nan, math.nan]]])
    lse_new = torch.tensor([[0.0], [1.0], [-math.inf]])
    merge_into(o_run, lse_run, torch.tensor([0, 1, 2]), o_new, lse_new)
    assert o_run[0].tolist() == [[2.0, 3.0]] and lse_run[0].item() == pytest.approx(math.log(2))
    assert o_run[1].tolist() == [[7.0, 8.0]] and lse_run[1].item() == 1.0
    assert o_run[2].tolist() == [[0.0, 0.0]] and math.isinf(lse_run[2].item())


def test_one_rank_tiles_equal_causal_float64():
    """W = 1: each chunk's rows are the home's causal tiles alone (prefix at home + chunk)."""
    torch.manual_seed(0)
    H, Hkv, D, T = 4, 2, 8, 13
    k, v, q = torch.randn(T, Hkv, D), torch.randn(T, Hkv, D), torch.randn(T, H, D)
    perm = torch.randperm(40)[:T]  # scattered slots, token order
    kb = torch.full((40, Hkv, D), math.nan)
    vb = torch.full((40, Hkv, D), math.nan)
    kb[perm], vb[perm] = k, v
    shape = TileShape(num_ranks=1, max_rows=8, capacity=8, num_q_heads=H, head_dim=D,
                      v_head_dim=D, max_kv_slots=40, tile_rows=2)  # fmt: skip
    ex = TileExchange(shape, "cpu")
    ptrs = [t.data_ptr() for t in (ex.q_home, ex.o_run, ex.kv_indices, ex.home_tiles)]
    got = torch.zeros(T, H, D)
    for a, b in ((0, 5), (5, 8), (8, 13)):
        p = Placement("r", 0, (Shard(0, 0, b),))
        route = build_tile_route([Chunk(p, a, b)], rank=0, num_ranks=1, tile_rows=2)
        ex.load(route, home_slots=[perm[:b]], guest_slots={})
        ex.scatter_rows(q[a:b], torch.arange(b - a))
        got[a:b] = ex.run(LocalCommunicator(), kb, vb, sm_scale=D**-0.5,
                          attention=prefix_attention)[: b - a]  # fmt: skip
    assert ptrs == [t.data_ptr() for t in (ex.q_home, ex.o_run, ex.kv_indices, ex.home_tiles)]
    qd = q.double().view(T, Hkv, H // Hkv, D)
    s = torch.einsum("thgd,nhd->thgn", qd, k.double()) * D**-0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril()[:, None, None], -math.inf)
    ref = torch.einsum("thgn,nhd->thgd", s.softmax(-1), v.double()).reshape(T, H, D)
    assert float((got.double() - ref).abs().max()) < 1e-5


def test_load_refuses_more_rows_than_reserved():
    shape = TileShape(num_ranks=1, max_rows=4, capacity=4, num_q_heads=1, head_dim=4,
                      v_head_dim=4, max_kv_slots=16, tile_rows=2)  # fmt: skip
    p = Placement("r", 0, (Shard(0, 0, 6),))
    route = build_tile_route([Chunk(p, 0, 6)], rank=0, num_ranks=1, tile_rows=2)
    with pytest.raises(ValueError, match="reserved"):
        TileExchange(shape, "cpu").load(route, home_slots=[torch.arange(6)], guest_slots={})
    assert shape.nbytes() > 0


def test_tiles_serve_what_the_row_route_defines():
    """Against ``extend.py``'s one-item-per-row definition on random scenarios: the same home
    rows in the same order, the same rows sent to each peer, each guest row over the same KV."""
    from sglang_dcp.exchange.extend import build_extend_route, home_rows
    from sglang_dcp.exchange.extend_scenario import make_extend_scenario

    for W, seed in ((3, 0), (4, 5)):
        _, steps = make_extend_scenario(W, seed)
        for st in steps:
            for rank in range(W):
                tiles = build_tile_route(st.chunks, rank=rank, num_ranks=W)
                slot_map = {}
                for c in st.chunks:
                    held = sum(s.num_tokens for s in c.prefix() if s.rank == rank)
                    n = held + (c.num_rows if c.home_rank == rank else 0)
                    if n:
                        slot_map[c.rid] = tuple(range(n))
                rows = build_extend_route(st.chunks, rank=rank, num_ranks=W, slot_map=slot_map)
                assert home_rows(st.chunks, rank) == [
                    (c.rid, c.start + i) for c in tiles.home for i in range(c.rows)]
                assert tuple(len(s) for s in rows.send) == tiles.send_rows
                for p in range(W):
                    want = [(g.rid.split("@")[0], len(g.slots)) for g in rows.recv[p]]
                    assert want == [(g.rid, g.held) for g in tiles.recv[p] for _ in range(g.rows)]


def test_returned_rows_carry_o_then_lse_in_one_message():
    """bf16 with an odd ``H * Dv``: o padded so each row's lse is 4-aligned, no overlap."""
    shape = TileShape(num_ranks=2, max_rows=4, capacity=4, num_q_heads=3, head_dim=4,
                      v_head_dim=5, max_kv_slots=8, tile_rows=2, dtype=torch.bfloat16)  # fmt: skip
    ex = TileExchange(shape, "cpu")
    q_send, q_recv, raw, o, lse, *_ = ex._views()
    assert raw.shape == (8, shape.row_bytes) and shape.row_bytes % 4 == 0
    assert o.shape == (8, 3, 5) and lse.shape == (8, 3) and lse.dtype == torch.float32
    o.fill_(1.5)
    lse.fill_(-2.0)
    assert (o == 1.5).all() and (lse == -2.0).all()
    assert raw.shape[0] * raw.shape[1] <= ex._r_send.numel()
