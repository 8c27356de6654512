"""Sealed-shard migration without SGLang: the controller's decision (``defrag.py``) over a real
``dcp`` policy, and a home's queue of asked moves (``migration.py``)."""

from types import SimpleNamespace

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang.defrag import Defragmenter, probe_move
from sglang_dcp.sglang.migration import Migrations, move_fault_hook, valid
from sglang_dcp.types import Request

PAGE = 64


def policy(threshold=1.1):
    c = ClusterSpec.uniform(4, PAGE * 1000, PAGE)
    return make_policy("dcp", c, load_profile("qwen3-235b-h200"), max_degree=4,
                       min_shard_tokens=PAGE * 4, rebalance_threshold=threshold)  # fmt: skip


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def controller(pol, waiting=("w",)):
    sent, drained = [], []
    d = SimpleNamespace(policy=pol, queue=dict.fromkeys(waiting), drain=lambda: drained.append(1))
    clock = Clock()
    f = Defragmenter(d, sent.append, num_ranks=4, max_tokens=PAGE * 200, clock=clock)
    return f, sent, drained, clock


def test_a_waiting_request_makes_the_controller_move_split_requests_ranges():
    pol = policy()
    assert pol.admit(Request("long", PAGE * 1500, 0), home_rank=0).degree > 1
    assert pol.admit(Request("short", PAGE * 600, 0), home_rank=1).degree == 1  # rank 1 fullest
    before = pol.kv_tokens()
    f, sent, drained, clock = controller(pol)
    moves = f.on_wait()
    assert moves and sent == [moves] and drained == [1]
    assert all(m.rid == "long" for m in moves)
    assert sum(m.end - m.start for m in moves) <= PAGE * 200
    assert max(pol.kv_tokens()) < max(before) and sum(pol.kv_tokens()) == sum(before)
    pol.verify()
    assert f.on_wait() == []  # at most every interval_s
    clock.t = 10.0
    f.dispatcher.queue.clear()
    assert f.on_wait() == []  # nobody waits: nothing moves


def test_ranges_of_unsplit_requests_are_taken_back_not_sent():
    pol = policy()
    for i in range(2):  # unsplit requests only: they do not run the DCP data path
        assert pol.admit(Request(f"r{i}", PAGE * 500 * (i + 1), 0), home_rank=i).degree == 1
    before = pol.kv_tokens()
    f, sent, drained, _ = controller(pol)
    assert f.on_wait() == [] and sent == [] and drained == []
    assert pol.kv_tokens() == before
    pol.verify()


def test_no_threshold_no_migration():
    pol = policy(threshold=None)
    pol.admit(Request("long", PAGE * 1500, 0), home_rank=0)
    f, sent, _, _ = controller(pol)
    assert f.on_wait() == [] and sent == []


def test_the_testing_move_goes_to_a_rank_without_the_requests_kv():
    assert probe_move("a", [[2, 0, 64], [0, 64, 128]], 0, 4) == Migration("a", 2, 1, 0, 64)
    assert probe_move("a", [[0, 0, 64]], 0, 4) is None  # nothing on a guest
    assert probe_move("a", [[1, 0, 64], [2, 64, 128], [3, 128, 192]], 0, 4) is None  # no room
    sent = []
    f = Defragmenter(SimpleNamespace(policy=None, queue={}), sent.append, num_ranks=4,
                     max_tokens=64, testing=True)  # fmt: skip
    report = SimpleNamespace(dcp_rank=0, rids=["a"], sealed=[[[2, 0, 64]]])
    assert f.on_report(report) == [Migration("a", 2, 1, 0, 64)]
    assert f.on_report(report) == []  # once per request


def test_the_home_takes_valid_moves_bounded_per_step():
    q = Migrations(rank=0, num_ranks=4)
    layout = ((2, 0, 64), (3, 64, 128), (0, 128, 300))
    asked = [Migration("a", 2, 1, 0, 64), Migration("a", 3, 1, 64, 128),
             Migration("b", 1, 2, 0, 64)]  # fmt: skip
    q.ask(asked, homed_here=lambda rid: rid == "a")
    assert "b" not in q.pending
    assert q.take("a", layout, 300, budget=1) == [asked[0]]
    assert q.take("a", layout, 300, budget=1) == [asked[1]] and "a" not in q.pending
    # stale: the range is not on the source any more, or reaches the tail the step writes
    q.ask([Migration("a", 1, 2, 0, 64), Migration("a", 0, 2, 128, 300)], lambda rid: True)
    assert q.take("a", layout, 300, budget=2) == [] and q.dropped == 2
    q.ask([Migration("a", 2, 1, 0, 64)], lambda rid: True)
    q.forget("a")
    assert q.take("a", layout, 300, budget=1) == [] and q.dropped == 3


def test_validity():
    layout = ((2, 0, 64), (0, 64, 100))
    assert valid(Migration("a", 2, 1, 0, 64), layout, 100, 4) == ""
    assert "bad move" in valid(Migration("a", 2, 2, 0, 64), layout, 100, 4)
    assert "bad move" in valid(Migration("a", 2, 4, 0, 64), layout, 100, 4)
    assert "on rank 0, not 2" in valid(Migration("a", 2, 1, 0, 80), layout, 100, 4)
    assert "reaches the tail" in valid(Migration("a", 0, 1, 64, 100), layout, 100, 4)


def test_migration_failures_are_injected_only_away_from_a_guest():
    from sglang_dcp.exchange.transfer import Phase

    moves = [Migration("mfail-1", 0, 2, 0, 64), Migration("mfail-1", 2, 3, 64, 128),
             Migration("ok-1", 2, 3, 0, 64)]  # fmt: skip
    homes = {"mfail-1": 0, "ok-1": 0}
    assert move_fault_hook(moves, 0.0, "", homes) is None
    hook = move_fault_hook(moves, 0.0, "mfail-", homes)
    fails = [[hook(ph, i) for ph in Phase] for i in range(3)]
    assert fails == [[False] * 3, [False, True, False], [False] * 3]  # SEND of move 1 only


def test_policies_that_do_not_migrate_are_left_alone():
    c = ClusterSpec.uniform(4, PAGE * 1000, PAGE)
    for name in ("round_robin", "total_tokens", "uniform"):
        pol = make_policy(name, c)
        f, sent, _, _ = controller(pol)
        assert f.on_wait() == [] and sent == []
