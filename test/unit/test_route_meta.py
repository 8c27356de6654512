"""Step metadata in the static exchange's fixed layout (``StaticExchange.load``, the server's
loader); overflow is refused, never truncated."""

import pytest
import torch

from sglang_dcp.exchange.buffers import ExchangeShape
from sglang_dcp.exchange.route import build_routes
from sglang_dcp.exchange.static import StaticExchange
from sglang_dcp.exchange.wire import HDR_COUNT
from sglang_dcp.types import Placement, Shard


def P(rid, home, *shards):
    return Placement(rid, home, tuple(Shard(*s) for s in shards))


PS = [
    P("a", 0, (1, 0, 4), (2, 4, 8), (0, 8, 10)),
    P("b", 0, (2, 0, 4), (0, 4, 5)),
    P("c", 1, (0, 0, 4), (1, 4, 6)),
]
SLOTS = [
    {"a": [40, 41], "b": [50], "c": [60, 61, 62, 63]},
    {"a": [1, 2, 3, 4], "c": [7, 8]},
    {"a": [9] * 4, "b": [5] * 4},
]


def shape(capacity=2, max_local=3, **kw):
    return ExchangeShape(num_ranks=3, max_local=max_local, capacity=capacity, num_q_heads=2,
                         head_dim=4, v_head_dim=4, max_kv_slots=64, **kw)


def _loaded(route, s, *, rounds=1, tag=0) -> StaticExchange:
    ex = StaticExchange(s, "cpu", num_row_keys=8)
    ex.load(route, rounds=rounds, tag=tag, row_keys=range(route.batch_size))
    return ex


def test_layout_rank0():
    r0 = build_routes(PS, num_ranks=3, slots=SLOTS)[0]
    m = _loaded(r0, shape()).bufs
    B, C = 3, 2
    # send: a -> peers 1 and 2, b -> peer 2; pads point at row 0
    assert m.send_index.tolist() == [0, 0, 0, 0, 0, 1]
    assert m.q_send_hdr[:, HDR_COUNT].tolist() == [0, 1, 2]  # queries sent to each peer
    assert m.r_send_hdr[:, HDR_COUNT].tolist() == [0, 1, 0]  # guest items from each peer
    lens = (m.kv_indptr[1:] - m.kv_indptr[:-1]).tolist()
    assert lens[:B] == [2, 1, 0]  # home rows a, b, pad
    assert lens[B + 1 * C] == 4  # guest c from peer 1
    assert sum(lens) == 7 and m.kv_indices[:7].tolist() == [40, 41, 50, 60, 61, 62, 63]
    # merge: a = (peer 1 #0, peer 2 #0, local row 0); b = (peer 2 #1, local row 1); pad row empty
    assert m.merge_index[:5].tolist() == [B + 1 * C + 0, B + 2 * C + 0, 0, B + 2 * C + 1, 1]
    assert m.seg_indptr.tolist() == [0, 3, 5, 5, B + 3 * C]  # last: the trash segment


def test_overflow_is_refused():
    routes = build_routes(PS, num_ranks=3, slots=SLOTS)
    with pytest.raises(ValueError, match="1 rounds of capacity 1 cannot carry 2 queries"):
        _loaded(routes[0], shape(capacity=1))
    with pytest.raises(ValueError, match="max_local"):
        _loaded(routes[0], shape(max_local=1))
    ex = _loaded(routes[0], shape(capacity=1), rounds=2)
    sent = []
    for k in range(2):
        ex.apply(k)
        sent.append(int(ex.bufs.q_send_hdr[:, HDR_COUNT].sum()))
    assert sent == [2, 1]  # nothing dropped: b goes in round 2


def test_buffer_views_alias_the_messages():
    ex = StaticExchange(shape(dtype=torch.bfloat16), "cpu", num_row_keys=8)
    bufs, s = ex.bufs, ex.shape
    assert bufs.q_send.shape == (3, s.q_msg_bytes) and s.q_msg_bytes % 16 == 0
    bufs.q_send_rows.fill_(1.5)
    bufs.r_send_lse.fill_(-2.0)
    r0 = build_routes(PS, num_ranks=3, slots=SLOTS)[0]
    ex.load(r0, rounds=1, tag=7, row_keys=range(r0.batch_size))
    assert bufs.q_send_hdr.tolist() == [[0, 7, 0, 0], [1, 7, 0, 0], [2, 7, 0, 0]]
    raw = bufs.q_send[1, 16 : 16 + s.q_bytes].view(torch.bfloat16)
    assert bool((raw == 1.5).all())
    assert bool((bufs.r_send_lse == -2.0).all()) and bool((bufs.r_send_o == 0).all())
