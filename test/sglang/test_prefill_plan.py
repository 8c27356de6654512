"""Prefill into shards without a server: the header's chunk news, the step plan and route of a
chunk, the pieces that ship after it, and the admission relaxations (prefill_shards.py,
admission.py, step.py, step_build.py)."""

from types import SimpleNamespace

import pytest
import torch

from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang.admission import lifted_limits, prefill_credit
from sglang_dcp.sglang.prefill_shards import away_pieces, away_tokens
from sglang_dcp.sglang.layout import where_now
from sglang_dcp.sglang.step import Extending, RankNews, plan_step
from sglang_dcp.sglang.step_build import build_step
from sglang_dcp.types import Placement, Shard

# home 0; ranks 1 and 2 hold [0, 64) and [64, 128); the home's tail from 128
P = Placement("r", 0, (Shard(1, 0, 64), Shard(2, 64, 128), Shard(0, 128, 200)))


def test_pieces_of_a_chunk_and_where_they_are():
    assert away_pieces(P, 32, 96) == [(1, 32, 64), (2, 64, 96)]
    assert away_pieces(P, 96, 160) == [(2, 96, 128)]
    assert away_tokens(P) == 128
    moved = [(1, 0, 32), (1, 32, 64), (2, 64, 96)]
    assert where_now(0, moved, 128) == ((1, 0, 64), (2, 64, 96), (0, 96, 128))
    assert where_now(0, [(1, 0, 64)], 64) == ((1, 0, 64), (0, 64, 64))  # empty home tail


def test_chunk_news_crosses_the_wire_and_plans_the_exchange():
    ext = Extending("r", 0, where_now(0, [(1, 0, 32)], 64), 32, 64)
    news = RankNews(extending=[ext], after=[Migration("r", 0, 1, 32, 64)])
    back = RankNews.from_words(news.to_words())
    assert back.extending == [ext] and back.after == news.after
    plan = plan_step([back, RankNews(), RankNews()], [])
    assert plan.active and plan.after == (Migration("r", 0, 1, 32, 64),)
    assert [p.rid for p in plan.rows()] == [f"r@{t}" for t in range(32, 64)]
    first = RankNews(extending=[Extending("r", 0, ((0, 0, 32),), 0, 32)])
    assert not plan_step([first], []).chunks  # nothing away yet: SGLang's attention alone


def test_a_chunks_route_on_the_home_and_on_the_shard_rank():
    row = torch.arange(1000, 1200)
    req = SimpleNamespace(kv=SimpleNamespace(req_pool_idx=3))
    r2t = torch.zeros(8, 200, dtype=torch.long)
    r2t[3] = row
    ext = Extending("r", 0, ((1, 0, 32), (0, 32, 64)), 32, 64)
    plan = plan_step([RankNews(extending=[ext]), RankNews()], [])
    home = build_step(plan, rank=0, num_ranks=2, home_reqs={"r": req}, guest_slots={},
                      req_to_token=r2t, capacity=4, tag=1)  # fmt: skip
    assert home.extend_rows == {3: (0, 32, 32)} and home.tiles.num_rows == 32
    assert home.extend_rids == {"r": (0, 32, 32)} and home.num_rows == 0  # no decode rows
    assert home.extend_capacity == 32 and home.rounds == 1 and not home.decode_split
    # the home's part: one causal span, the chunk's 32 slots (row 32 + i sees i + 1 of them)
    (span,), guests = home.tile_slots
    assert len(span) == 32 and torch.cat(span.parts).tolist() == row[32:64].tolist()
    assert guests == {} and home.tiles.home[0].held == 0 and home.tiles.send_rows == (0, 32)
    guest = build_step(plan, rank=1, num_ranks=2, home_reqs={},
                       guest_slots={"r": torch.arange(32)}, req_to_token=r2t, capacity=4,
                       tag=1)  # fmt: skip
    assert guest.num_rows == 0 and guest.tiles.num_rows == 0
    (g,) = guest.tiles.recv[0]  # the whole shard once, for the chunk's 32 rows (non-causal)
    assert (g.rows, g.held, g.offset) == (32, 32, 0) and len(guest.tile_slots[1]["r"]) == 32
    assert guest.tiles.kv_reads()["tiles"] == 32  # one tile of <= 64 rows reads it once


def _extend_backend(rows: int = 8):
    from sglang_dcp.sglang.backend_extend import ExtendCalls

    be = ExtendCalls()
    pool = SimpleNamespace(size=64, page_size=1)
    be.__dict__.update(_runner=SimpleNamespace(token_to_kv_pool=pool), num_ranks=2,
                       num_q_heads=2, head_dim=4, v_head_dim=4, dtype=torch.float32,
                       device=torch.device("cpu"), _extend_x=None, _inner_fb=None)  # fmt: skip
    be.reserve_tiles(rows)
    return be


def test_the_backend_maps_only_the_split_chunks_rows():
    step = SimpleNamespace(tiles=SimpleNamespace(num_rows=3, max_stream=3),
                           extend_rids={"b": (0, 32, 3)}, extend_rows={3: (0, 32, 3)})  # fmt: skip
    fb = SimpleNamespace(req_pool_indices=torch.tensor([5, 3]), extend_seq_lens_cpu=[4, 3],
                         extend_prefix_lens_cpu=[0, 32], rids=["a", "b"],
                         extend_seq_lens=torch.tensor([4, 3]),
                         extend_prefix_lens=torch.tensor([0, 32]),
                         seq_lens=torch.tensor([4, 35]), seq_lens_cpu=torch.tensor([4, 35]),
                         seq_lens_sum=39)  # fmt: skip
    be = _extend_backend()
    view = be.prepare_extend(fb, step)
    assert be.extend_rows_of(fb).tolist() == [8, 8, 8, 8, 0, 1, 2]
    # the inner sees the split request without its prefix (never its moved KV)
    assert view.extend_prefix_lens.tolist() == [0, 0] and view.seq_lens.tolist() == [4, 3]
    assert view.extend_prefix_lens_cpu == [0, 0] and view.seq_lens_cpu.tolist() == [4, 3]
    assert view.seq_lens_sum == 7 and fb.seq_lens.tolist() == [4, 35]  # fb itself untouched
    del fb.rids  # no rids: the host copy of the pool indices
    fb.req_pool_indices_cpu = torch.tensor([5, 3])
    be.prepare_extend(fb, step)
    assert be.extend_rows_of(fb).tolist() == [8, 8, 8, 8, 0, 1, 2]
    fb.extend_prefix_lens_cpu = [0, 31]
    with pytest.raises(RuntimeError, match="header's chunk"):
        be.prepare_extend(fb, step)


def test_admission_sees_the_homes_share_for_split_requests_only():
    sched = SimpleNamespace(chunked_prefill_size=32, max_req_len=250, max_req_input_len=245,
                            max_total_num_tokens=256,
                            model_config=SimpleNamespace(context_len=8192))  # fmt: skip
    with lifted_limits(sched, P, 600):
        assert (sched.max_req_len, sched.max_req_input_len) == (8191, 8186)
        assert sched.max_total_num_tokens == 256 + 128
    assert (sched.max_req_len, sched.max_total_num_tokens) == (250, 256)
    single = Placement("s", 0, (Shard(0, 0, 600),))
    with lifted_limits(sched, single, 600):
        assert sched.max_req_input_len == 245  # one rank: SGLang's checks unchanged
    req = SimpleNamespace(dcp=P, prefix_indices=[])
    assert prefill_credit(req, 32) == 128 - 32
    assert prefill_credit(SimpleNamespace(dcp=P, prefix_indices=[1]), 32) == 0  # continuing
    assert prefill_credit(req, None) == 0  # no chunked prefill: the home holds it all


def test_a_failed_piece_aborts_a_request_that_is_still_prefilling(monkeypatch):
    from sglang_dcp.sglang import datapath, overlap, prefill_shards, shipping

    req = SimpleNamespace(rid="r", dcp=P)
    sched = SimpleNamespace(chunked_req=req, _pending_chunked_abort_req=None)
    rt = SimpleNamespace(rank=0, scheduler=sched, model_runner=None, prefill_failed={},
                         home={"r": datapath.HomeEntry(req)})  # fmt: skip
    ok, bad = Migration("r", 0, 1, 0, 32), Migration("r", 0, 1, 32, 64)
    rt.after = (ok, bad)
    monkeypatch.setattr(shipping, "ship", lambda rt, moves, runner, homes: [bad])
    monkeypatch.setattr(overlap, "wait_for_forward", lambda runner: None)
    prefill_shards.after_forward(rt)
    lay = rt.home["r"].layout
    assert rt.after == () and lay.offered == 64 and lay.failed == ((1, 32, 64),)
    assert sched._pending_chunked_abort_req is req
    assert "tokens [32, 64) of r from rank 0 to rank 1 failed" in rt.prefill_failed["r"]
    # after its last chunk (no longer SGLang's chunked request) a failed piece stays home
    sched.chunked_req, sched._pending_chunked_abort_req, rt.prefill_failed = None, None, {}
    rt.after = (bad,)
    prefill_shards.after_forward(rt)
    assert sched._pending_chunked_abort_req is None and not rt.prefill_failed
