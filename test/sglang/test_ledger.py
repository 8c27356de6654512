"""The ledger without a server (sglang/ledger.py): a home's shard-move results become its
requests' ranges (``meta_info["dcp"]``) and a report to the DP controller, whose planner books
follow it; the planner's per-rank view goes back to the ranks."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)

from sglang.srt.managers import io_struct  # noqa: E402

from sglang_dcp.exchange.transfer import ShardMove, TransferResult  # noqa: E402
from sglang_dcp.planner import ClusterSpec, load_profile, make_policy  # noqa: E402
from sglang_dcp.sglang import context, ledger, rank_stats  # noqa: E402
from sglang_dcp.sglang.dispatcher import DcpDispatcher  # noqa: E402
from sglang_dcp.sglang.entries import HomeEntry  # noqa: E402
from sglang_dcp.sglang.messages import DcpPlannerView, register_types  # noqa: E402
from sglang_dcp.types import Placement, Shard  # noqa: E402

PROMPT = 2600
P = Placement("long", 0, (Shard(1, 0, 1024), Shard(2, 1024, 2048), Shard(0, 2048, PROMPT)))


def new_req(placement=P, outputs=1, finished=False):
    return SimpleNamespace(
        rid=placement.rid, dcp=placement, origin_input_ids=[5] * PROMPT,
        output_ids=[9] * outputs, finished=lambda: finished,
    )  # fmt: skip


def ship(rank_ledger, req, ok: dict[int, bool], other=()):
    """What ``datapath._ship`` does on the home: run the moves of ``req``'s sealed shards
    (``ok`` by destination rank), record the done ones, then tell the ledger."""
    h = HomeEntry(req)
    h.layout = h.layout.with_offered(h.layout.sealed_end)  # every sealed range tried
    results = []
    for s in req.dcp.shards[:-1]:
        m = ShardMove(req.rid, req.dcp.home_rank, s.rank, s.start, s.end)
        results.append(TransferResult(m, ok[s.rank], "" if ok[s.rank] else "injected fault"))
        if ok[s.rank]:
            h.layout = h.layout.with_move(s.rank, s.start, s.end)
    rank_ledger.shipped([*results, *other], {req.rid: h})
    return h


def shards(req):
    return [[s.rank, s.start, s.end] for s in ledger.current_placement(req).shards]


def test_ranges_as_they_are_before_and_after_the_moves():
    req = new_req()
    assert shards(req) == [[0, 0, PROMPT]]  # prefilled, nothing shipped yet
    sent = []
    ship(ledger.RankLedger(0, lambda inbox, msg: sent.append(msg)), req, {1: True, 2: False})
    assert shards(req) == [[1, 0, 1024], [0, 1024, PROMPT]]
    req.output_ids += [9] * 4  # four more decode steps: the tail holds the KV written
    assert shards(req) == [[1, 0, 1024], [0, 1024, PROMPT + 4]]
    assert ledger.current_placement(req).degree == 2


def test_a_retracted_request_holds_nothing_away_a_finished_one_keeps_its_ranges():
    rl = ledger.RankLedger(0, lambda inbox, msg: None)
    req = new_req()
    ship(rl, req, {1: True, 2: True})
    done = new_req(finished=True)
    ship(rl, done, {1: True, 2: True})
    rl.released(done)
    assert shards(done) == [[1, 0, 1024], [2, 1024, 2048], [0, 2048, PROMPT]]
    rl.released(req)  # retraction: KV back home, ships again after its new prefill
    assert shards(req) == [[0, 0, PROMPT]]


def test_reports_wait_for_the_inbox_then_go_in_order(monkeypatch):
    monkeypatch.setattr(context, "_CTX", context.RankContext())
    sent = []
    rl = ledger.RankLedger(0, lambda inbox, msg: sent.append((inbox, msg)))
    someone_else = TransferResult(ShardMove("x", 3, 0, 0, 64), True)  # homed on rank 3
    ship(rl, new_req(), {1: True, 2: False}, other=[someone_else])
    ship(rl, new_req(Placement("b", 0, (Shard(2, 0, 64), Shard(0, 64, 100)))), {2: True})
    assert sent == [] and len(rl.pending) == 2
    rl.on_view(DcpPlannerView(inbox="tcp://dpc:1", kv_tokens=[7, 8, 9, 10],
                              guest_kv_tokens=[0, 1024, 0, 0]))  # fmt: skip
    assert [m.rids for _, m in sent] == [["long"], ["b"]] and rl.pending == []
    first = sent[0][1]
    assert first.sealed == [[[1, 0, 1024], [0, 1024, 2048]]]
    assert (first.dcp_rank, first.moves_done, first.moves_failed) == (0, 1, 1)
    s = context.stats()
    assert (s.planner_kv_tokens, s.planner_guest_kv_tokens) == (7, 0)
    ship(rl, new_req(), {1: True, 2: True})
    assert sent[-1][0] == "tcp://dpc:1"  # known inbox: sent at once


# ---- the controller end -----------------------------------------------------------------------


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def dpc():
    cluster = ClusterSpec.uniform(4, 1024, 64)
    policy = make_policy("dcp", cluster, load_profile("deepseek-v3-h200"), max_degree=4,
                         min_shard_tokens=64)  # fmt: skip
    sent, views = [], []
    d = DcpDispatcher(
        policy, send=lambda rank, req, p: sent.append((rank, req.rid, p)),
        reject=lambda req, reason: None, active_ranks=lambda: range(4), queue=True,
    )  # fmt: skip
    clock = Clock()
    books = ledger.PlannerBooks(d, lambda kv, g: views.append((kv, g)), clock=clock)
    return SimpleNamespace(d=d, books=books, sent=sent, views=views, clock=clock)


def tokenized(rid, prompt, max_new=8):
    return SimpleNamespace(rid=rid, input_ids=[1] * prompt, routed_dp_rank=None,
                           sampling_params=SimpleNamespace(max_new_tokens=max_new))  # fmt: skip


def report_from_home(placement, ok: dict[int, bool]):
    """The home's report for ``placement``, through the wire as the socket carries it."""
    register_types()
    msgs = []
    req = new_req(placement)
    req.origin_input_ids = [5] * placement.shards[-1].end
    rl = ledger.RankLedger(placement.home_rank, lambda inbox, m: msgs.append(m))
    rl.inbox = "tcp://dpc:1"
    ship(rl, req, ok)
    [msg] = msgs
    return io_struct.msgpack_decode(io_struct.msgpack_encode(msg))


def test_failed_moves_put_the_range_back_on_the_home_in_the_planners_books(dpc):
    dpc.d.dispatch(tokenized("long", PROMPT))
    [(home, _, placed)] = dpc.sent
    guests = {s.rank for s in placed.shards[:-1]}
    assert len(guests) >= 2  # how many: the planner's choice (2 or 3 of 4 ranks)
    dpc.books.tick(force=True)
    kv, guest_kv = dpc.views[-1]
    assert all(guest_kv[g] > 0 for g in guests)
    dpc.books.on_report(report_from_home(placed, {g: False for g in guests}))
    policy = dpc.d.policy
    assert policy.placement("long").degree == 1
    policy.verify()
    kv, guest_kv = dpc.views[-1]  # published at once
    assert guest_kv == [0] * 4 and kv[home] == sum(kv)
    assert (dpc.books.moves_done, dpc.books.moves_failed) == (0, len(guests))
    dpc.d.finished(["long"])
    dpc.clock.t += 1.0
    dpc.books.tick()
    assert dpc.views[-1] == ([0] * 4, [0] * 4)


def test_half_the_moves_failed_and_the_books_match_the_ranks(dpc):
    dpc.d.dispatch(tokenized("long", PROMPT))
    [(home, _, placed)] = dpc.sent
    guests = [(s.rank, s.end - s.start) for s in placed.shards[:-1]]
    assert len(guests) >= 2  # how many: the planner's choice (2 or 3 of 4 ranks)
    ok = {g: i % 2 == 0 for i, (g, _) in enumerate(guests)}  # every other move fails
    dpc.books.on_report(report_from_home(placed, ok))
    _, guest_kv = dpc.views[-1]
    assert all(guest_kv[g] == (n if ok[g] else 0) for g, n in guests)
    dpc.d.policy.verify()


def test_the_view_goes_out_when_it_changed_at_most_every_interval(dpc):
    dpc.books.tick()
    assert len(dpc.views) == 1
    dpc.d.dispatch(tokenized("a", 100))
    dpc.books.tick()  # within the interval: waits
    assert len(dpc.views) == 1
    dpc.clock.t += dpc.books.interval_s
    dpc.books.tick()
    assert len(dpc.views) == 2 and sum(dpc.views[-1][0]) > 0
    dpc.clock.t += dpc.books.interval_s
    dpc.books.tick()  # unchanged: nothing sent
    assert len(dpc.views) == 2


def test_room_freed_by_a_report_lets_a_waiting_request_in(dpc):
    dpc.d.dispatch(tokenized("long", PROMPT))
    [(home, _, placed)] = dpc.sent
    dpc.d.dispatch(tokenized("next", 1900))
    assert list(dpc.d.queue) == ["next"]
    dpc.books.on_report(report_from_home(placed, {s.rank: False for s in placed.shards[:-1]}))
    assert not dpc.d.queue and dpc.sent[-1][1] == "next"
    dpc.d.policy.verify()


def test_a_report_the_planner_cannot_place_is_ignored(dpc, caplog):
    dpc.d.dispatch(tokenized("long", PROMPT))
    before = dpc.d.policy.kv_tokens()
    bad = SimpleNamespace(dcp_rank=0, rids=["long", "gone"], sealed=[[[1, 0, 100]], [[1, 0, 64]]],
                          moves_done=1, moves_failed=0)  # fmt: skip
    dpc.books.on_report(bad)
    assert dpc.d.policy.kv_tokens() == before
    assert "ledger report from rank 0 ignored" in caplog.text


def test_the_report_after_a_prefill_into_shards_ends_its_transient():
    cluster = ClusterSpec.uniform(4, 1024, 64)
    policy = make_policy("dcp", cluster, load_profile("deepseek-v3-h200"), max_degree=4,
                         min_shard_tokens=64, prefill_chunk=128)  # fmt: skip
    sent, views = [], []
    d = DcpDispatcher(
        policy, send=lambda rank, req, p: sent.append((rank, req.rid, p)),
        reject=lambda req, reason: None, active_ranks=lambda: range(4), queue=True,
    )  # fmt: skip
    books = ledger.PlannerBooks(d, lambda kv, g: views.append((kv, g)), clock=Clock())
    d.dispatch(tokenized("long", PROMPT))
    [(home, _, placed)] = sent
    held = policy.kv_tokens()[home]
    assert policy._recs["long"].transient > 0  # the home's chunk on its way out
    books.on_report(report_from_home(placed, {s.rank: True for s in placed.shards[:-1]}))
    assert policy._recs["long"].transient == 0 and policy.kv_tokens()[home] < held
    policy.verify()
