"""``StaticExchange``: the serving engine's in-place step loading equals the reference layout
(``_layout_oracle.reference_layout``), never moves a buffer, and maps batch rows on the device."""

import random

import torch

from sglang_dcp.exchange.buffers import ExchangeBuffers, ExchangeShape
from sglang_dcp.exchange.route import build_routes, max_pair_items, num_rounds, split_rounds
from sglang_dcp.exchange.static import Slots, StaticExchange
from sglang_dcp.types import Placement, Shard

from _layout_oracle import reference_layout


def P(rid, home, *shards):
    return Placement(rid, home, tuple(Shard(*s) for s in shards))


def shape(W=3, capacity=2, max_local=4, max_kv_slots=256):
    return ExchangeShape(num_ranks=W, max_local=max_local, capacity=capacity, num_q_heads=2,
                         head_dim=4, v_head_dim=4, max_kv_slots=max_kv_slots)  # fmt: skip


def _random_step(rng, W, n_req):
    """Placements over W ranks and, per rank, slot maps as tensors (Slots) and as lists."""
    ps, lists = [], [dict() for _ in range(W)]
    for i in range(n_req):
        home = rng.randrange(W)
        L = rng.randrange(1, 40)
        cuts = sorted(rng.sample(range(1, L), min(rng.randrange(0, 3), L - 1))) if L > 1 else []
        bounds = [0, *cuts, L]
        shards = [(rng.randrange(W), a, b) for a, b in zip(bounds, bounds[1:])]
        shards[-1] = (home, shards[-1][1], shards[-1][2])
        ps.append(P(f"r{i}", home, *shards))
        for r in range(W):
            n = sum(b - a for rr, a, b in shards if rr == r)
            if n:
                lists[r][f"r{i}"] = [rng.randrange(200) for _ in range(n)]
    return ps, lists


def _as_slots(lists):
    out = []
    for m in lists:
        d = {}
        for rid, s in m.items():
            t = torch.tensor(s, dtype=torch.int32)
            cut = len(s) // 2  # two pieces, as a home's local ranges would be
            d[rid] = Slots([t[:cut], t[cut:]])
        out.append(d)
    return out


def _same(bufs_a: ExchangeBuffers, bufs_b, num_kv: int):
    for name in ("send_index", "kv_indptr", "merge_index", "seg_indptr"):
        assert torch.equal(getattr(bufs_a, name).long(), getattr(bufs_b, name).long()), name
    assert torch.equal(bufs_a.kv_indices[:num_kv].long(), bufs_b.kv_indices[:num_kv].long())
    assert torch.equal(bufs_a.q_send_hdr, bufs_b.q_send_hdr)
    assert torch.equal(bufs_a.r_send_hdr, bufs_b.r_send_hdr)


def test_load_equals_reference_layout_and_buffers_never_move():
    rng = random.Random(0)
    W, C = 3, 2
    sx = [StaticExchange(shape(W, C), "cpu", num_row_keys=64) for _ in range(W)]
    ptrs = [dict(s.bufs.data_ptrs(), row=s.row_slot.data_ptr()) for s in sx]
    multi = 0
    for step in range(120):
        ps, lists = _random_step(rng, W, rng.randrange(0, 5))
        ref = build_routes(ps, num_ranks=W, slots=lists)
        dev = build_routes(ps, num_ranks=W, slots=_as_slots(lists))
        rounds = num_rounds(ps, W, C)
        multi += rounds > 1
        for r in range(W):
            if ref[r].batch_size > 4:
                continue
            got = sx[r].load(dev[r], rounds=rounds, tag=step, row_keys=range(ref[r].batch_size))
            assert got == rounds
            for k, part in enumerate(split_rounds(ref[r], capacity=C, rounds=rounds)):
                sx[r].apply(k)
                want = reference_layout(part, shape(W, C), tag=step)
                _same(sx[r].bufs, want, want.kv_indices.numel())
            assert dict(sx[r].bufs.data_ptrs(), row=sx[r].row_slot.data_ptr()) == ptrs[r]
    assert multi > 0  # some steps needed rounds


def test_rows_map_through_keys():
    s = StaticExchange(shape(max_local=3), "cpu", num_row_keys=10)
    ps = [P("a", 0, (1, 0, 3), (0, 3, 5)), P("b", 0, (2, 0, 2), (0, 2, 4))]
    lists = [{"a": [1, 2], "b": [3, 4]}, {"a": [5, 6, 7]}, {"b": [8, 9]}]
    route = build_routes(ps, num_ranks=3, slots=lists)[0]
    s.load(route, rounds=1, tag=1, row_keys=[7, 2])  # a has pool index 7, b 2
    keys = torch.tensor([5, 2, 9, 7, 0])  # batch order: plain, b, plain, a, padding
    valid = torch.tensor([True, True, True, True, False])
    x = s.row_index(keys, valid)
    assert x.tolist() == [3, 1, 3, 0, 3]
    q = torch.arange(5 * 8, dtype=torch.float32).view(5, 2, 4)
    s.scatter_rows(q, x)
    assert torch.equal(s.bufs.q_in[0], q[3]) and torch.equal(s.bufs.q_in[1], q[1])
    inner = torch.full((5, 8), -1.0)
    merged = torch.stack([torch.full((2, 4), 10.0), torch.full((2, 4), 20.0), torch.zeros(2, 4)])
    out = s.gather_rows(inner, x, merged)
    assert out[:, 0].tolist() == [-1.0, 20.0, -1.0, 10.0, -1.0]
    # the next step forgets the old keys
    s.load(route, rounds=1, tag=2, row_keys=[5, 9])
    assert s.row_index(keys).tolist() == [0, 3, 1, 3, 3]


def test_reloading_longer_home_slots_equals_a_full_load():
    """A predicted decode step (``reload_local``: only the home rows' own slots grew) leaves the
    buffers exactly as a full ``load`` of that route does, on every rank, step after step."""
    from dataclasses import replace

    import pytest

    rng = random.Random(7)
    W = 3
    for trial in range(20):
        ps, lists = _random_step(rng, W, rng.randrange(1, 4))
        for rank in range(W):
            routes = build_routes(ps, num_ranks=W, slots=_as_slots(lists))
            route = routes[rank]
            if num_rounds(ps, W, 8) > 1:
                continue
            a = StaticExchange(shape(W, capacity=8), "cpu", num_row_keys=16)
            a.load(route, rounds=1, tag=1, row_keys=list(range(route.batch_size)))
            for step in range(3):  # each home tail one slot longer per step
                grown = tuple(Slots([*s.parts, torch.tensor([100 + step], dtype=torch.int32)])
                              for s in route.local_slots)  # fmt: skip
                route = replace(route, local_slots=grown)
                a.reload_local(route, tag=2 + step)
                b = StaticExchange(shape(W, capacity=8), "cpu", num_row_keys=16)
                b.load(route, rounds=1, tag=2 + step, row_keys=list(range(route.batch_size)))
                _same(a.bufs, b.bufs, route.num_kv_slots)
                assert a.rounds[0].num_kv == b.rounds[0].num_kv
            other = replace(route, send=tuple(s + (0,) for s in route.send))
            with pytest.raises(ValueError, match="loaded route's structure"):
                a.reload_local(other, tag=9)
