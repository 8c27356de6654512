"""Each policy's placement rule, rejections, the factory, and the no-torch rule."""

import subprocess
import sys

import pytest

from sglang_dcp.planner import (
    POLICIES,
    ClusterSpec,
    KVOverflowError,
    Migration,
    load_profile,
    make_policy,
)
from sglang_dcp.types import Placement, Rejection, Request

DS = load_profile("deepseek-v3-h200")
QW = load_profile("qwen3-235b-h200")


def cluster(n=4, cap=100 * 1024, page=64):
    return ClusterSpec.uniform(n, cap, page)


def req(i, prompt, new=0):
    return Request(f"r{i}", prompt, new)


# ---- factory ---------------------------------------------------------------------------


def test_factory_names_and_errors():
    assert POLICIES == ("round_robin", "total_tokens", "total_tokens_sglang", "uniform", "dcp")
    with pytest.raises(ValueError, match="round_robin, total_tokens, total_tokens_sglang, uniform"):
        make_policy("nope", cluster())
    with pytest.raises(ValueError, match="needs a cost profile"):
        make_policy("dcp", cluster())
    with pytest.raises(ValueError, match="max_degree"):
        make_policy("uniform", cluster(), max_degree=2)
    with pytest.raises(ValueError, match="group_size"):
        make_policy("uniform", cluster(6), group_size=4)
    p = make_policy("dcp", cluster(), "qwen3-235b-h200", max_degree=None, min_shard_tokens=1000)
    assert p.name == "dcp" and p.min_shard_tokens == 1024 and p.max_degree == 4
    for name in POLICIES:
        assert make_policy(name, cluster(), DS).name == name


def test_planner_never_imports_torch():
    code = (
        "import sys, sglang_dcp.planner as p; p.make_policy('dcp', p.ClusterSpec.uniform(2, 640),"
        " 'deepseek-v3-h200'); bad = [m for m in ('torch', 'sglang', 'triton')"
        " if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- baselines ---------------------------------------------------------------------------


def test_round_robin_counter_and_waiting_rule():
    p = make_policy("round_robin", cluster(3, cap=1024))
    homes = [p.admit(req(i, 100)).home_rank for i in range(4)]
    assert homes == [0, 1, 2, 0]
    # rank 1 holds 128 of 1024; a 960-token request dispatched to it must wait there
    got = p.admit(req(9, 960))
    assert isinstance(got, Rejection) and got.retryable and "rank 1" in got.reason
    assert p.waiting() == {"r9": 1}
    p.admit(req(10, 64))  # the counter moved on: rank 2
    assert p.placement("r10").home_rank == 2
    p.finish("r1")
    got = p.admit(req(9, 960))  # the retry goes to the same rank
    assert isinstance(got, Placement) and got.home_rank == 1 and got.degree == 1
    assert p.waiting() == {}
    p.verify()


def test_total_tokens_argmin_used_tokens_then_requests():
    p = make_policy("total_tokens", cluster(3))
    assert p.admit(req(0, 5000)).home_rank == 0
    assert p.admit(req(1, 100)).home_rank == 1
    assert p.admit(req(2, 100)).home_rank == 2
    assert p.admit(req(3, 100)).home_rank == 1  # (100, 1) ties (100, 1): lowest index
    p.append("r2", 50)  # used tokens now [5000, 200, 150]
    assert p.admit(req(4, 10)).home_rank == 2
    p.verify()


def test_baselines_never_fit():
    for name in ("round_robin", "total_tokens"):
        p = make_policy(name, cluster(4, cap=1024))
        got = p.admit(req(0, 1500))
        assert isinstance(got, Rejection) and not got.retryable and "1536" in got.reason


def test_uniform_splits_evenly_tail_on_home():
    p = make_policy("uniform", cluster(8, cap=64 * 1024), group_size=4)
    got = p.admit(req(0, 64 * 40 + 10, 100))  # 42 pages reserved -> 10 pages per guest
    assert isinstance(got, Placement) and got.degree == 4
    assert set(got.shard_ranks) == {0, 1, 2, 3}
    assert [s.num_tokens for s in got.shards[:-1]] == [640, 640, 640]
    assert got.shards[-1].rank == got.home_rank and got.shards[-1].end == 64 * 40 + 10
    got2 = p.admit(req(1, 100))  # the other group is emptier
    assert set(got2.shard_ranks) <= {4, 5, 6, 7}
    p.verify()


def test_uniform_default_groups_stay_inside_a_node():
    """A DCP group lives in one TP group, so in one node: on 12 ranks of 8-rank nodes the
    default is groups of 4 (6 would straddle nodes), and a group never crosses a boundary."""
    def size(n, rpn=8):
        return make_policy("uniform", ClusterSpec.uniform(n, 64 * 1024, 64, rpn)).group_size

    assert [size(n) for n in (1, 4, 6, 8, 12, 16, 24, 32)] == [1, 4, 6, 8, 4, 8, 8, 8]
    assert size(16, rpn=4) == 4 and size(12, rpn=6) == 6 and size(6, rpn=4) == 2
    for n, rpn in ((12, 8), (16, 4), (24, 8), (6, 4)):
        cl = ClusterSpec.uniform(n, 64 * 1024, 64, rpn)
        g = make_policy("uniform", cl).group_size
        assert all(cl.same_node(r, r - r % g) for r in range(n))


# ---- dcp -------------------------------------------------------------------------------


def test_dcp_short_requests_stay_whole_and_balance_batch():
    p = make_policy("dcp", cluster(4), DS)
    for i in range(8):
        got = p.admit(req(i, 500, 50))
        assert got.degree == 1
    assert p.batch_sizes() == [2, 2, 2, 2]
    p.verify()


def test_dcp_gain_rule_splits_a_straggler_and_not_when_it_does_not_pay():
    c = ClusterSpec.uniform(8, DS.kv_capacity_tokens, 64)
    p = make_policy("dcp", c, DS, split_rule="gain")
    got = p.admit(req(0, 400_000, 1000))  # 10 ms of attention on one rank
    assert got.degree > 1 and got.shards[-1].rank == got.home_rank
    assert all(s.num_tokens >= p.min_shard_tokens for s in got.shards[:-1])
    assert all(s.start % 64 == 0 and s.end % 64 == 0 for s in got.shards[:-1])
    assert got.shards[-1].start <= 400_000 - 400_000 % 64  # the partial page stays in the tail
    p.verify()
    # the same request is not split when the exchange cost exceeds the gain
    q = make_policy("dcp", c, DS, split_rule="gain", min_gain_us=1e9)
    assert q.admit(req(0, 400_000, 1000)).degree == 1
    # the default rule (split only for fit) keeps it whole: a rank can hold it
    assert make_policy("dcp", c, DS).admit(req(0, 400_000, 1000)).degree == 1


@pytest.mark.parametrize("live_per_rank, split", [(0, True), (7, True), (8, False)])
def test_dcp_gain_rule_yields_to_fit_when_many_requests_live(live_per_rank, split):
    """With ``gain_max_live`` (8) or more live requests per rank, the next whole placements
    level the ranks: the straggler the gain rule splits on an idle cluster stays whole."""
    c = ClusterSpec.uniform(8, DS.kv_capacity_tokens, 64)
    p = make_policy("dcp", c, DS, split_rule="gain")
    for i in range(live_per_rank * 8):  # short requests, spread by the home rule
        assert p.admit(req(f"s{i}", 512, 16)).degree == 1
    got = p.admit(req("long", 400_000, 1000))
    assert (got.degree > 1) == split
    p.verify()
    off = make_policy("dcp", c, DS, split_rule="gain", gain_max_live=0)  # 0: the rule is off
    for i in range(live_per_rank * 8):
        off.admit(req(f"s{i}", 512, 16))
    assert off.admit(req("long", 400_000, 1000)).degree > 1
    with pytest.raises(ValueError, match="gain_max_live must be >= 0"):
        make_policy("dcp", c, DS, gain_max_live=-1)


def test_dcp_split_forced_by_capacity():
    c = ClusterSpec.uniform(4, 64 * 1000, 64)
    p = make_policy("dcp", c, QW)
    got = p.admit(req(0, 150_000, 64))
    assert isinstance(got, Placement) and got.degree >= 3
    assert max(p.kv_tokens()) <= 64 * 1000
    p.verify()
    rej = p.admit(req(1, 300_000))
    assert isinstance(rej, Rejection) and not rej.retryable and "300032" in rej.reason
    rej = p.admit(req(2, 120_000))  # 106k free now
    assert isinstance(rej, Rejection) and rej.retryable
    p.finish("r0")
    assert p.kv_tokens() == [0, 0, 0, 0]


def test_pinned_home_rank():
    p = make_policy("dcp", cluster(4, cap=64 * 100), QW, min_shard_tokens=640)
    got = p.admit(req(0, 64 * 150, 64), home_rank=2)
    assert got.home_rank == 2 and got.shards[-1].rank == 2
    with pytest.raises(ValueError, match="out of range"):
        p.admit(req(1, 10), home_rank=4)
    p.admit(req(3, 64 * 60), home_rank=1)
    rej = p.admit(req(4, 600, 3000), home_rank=1)  # too short to split, rank 1 is busy
    assert isinstance(rej, Rejection) and rej.retryable and "pinned home rank 1" in rej.reason
    for name in ("round_robin", "total_tokens", "uniform"):
        q = make_policy(name, cluster(4))
        assert q.admit(req(0, 10), home_rank=3).home_rank == 3
    p.verify()


def test_append_grows_past_reservation_or_overflows():
    p = make_policy("total_tokens", cluster(1, cap=256))
    p.admit(req(0, 60, 4))
    assert p.kv_tokens() == [64]
    p.append("r0", 4)
    assert p.kv_tokens() == [64] and p.kv_used() == [64]
    p.append("r0", 1)
    assert p.kv_tokens() == [128] and p.placement("r0").shards[-1].end == 65
    p.admit(req(1, 128))
    with pytest.raises(KVOverflowError):
        p.append("r0", 64)
    assert p.kv_tokens() == [256]
    p.verify()


def test_set_capacity():
    p = make_policy("dcp", cluster(2, cap=1024), DS)
    p.admit(req(0, 500))
    with pytest.raises(ValueError, match="multiple"):
        p.set_capacity(0, 100)
    with pytest.raises(ValueError, match="cannot shrink"):
        p.set_capacity(0, 0)
    p.set_capacity(1, 0)
    got = p.admit(req(1, 500))
    assert got.home_rank == 0 or isinstance(got, Rejection)
    p.verify()


def test_dcp_rebalance_moves_sealed_ranges_within_budget():
    c = ClusterSpec.uniform(4, 64 * 4000, 64)
    p = make_policy(
        "dcp", c, QW, max_degree=4, min_shard_tokens=640, rebalance_threshold=1.1, min_gain_us=1e9
    )
    for i in range(4):  # one long, page-aligned, unsplit request per rank
        assert p.admit(req(i, 64 * 500 * (i + 1)), home_rank=i).degree == 1
    p.finish("r0")
    p.finish("r1")
    before = p.kv_tokens()
    moves = p.rebalance(64 * 300)
    assert moves and all(isinstance(m, Migration) for m in moves)
    assert sum(m.end - m.start for m in moves) <= 64 * 300
    after = p.kv_tokens()
    assert max(after) < max(before) and sum(after) == sum(before)
    for m in moves:
        pl = p.placement(m.rid)
        assert any(s.rank == m.dst and s.start <= m.start and m.end <= s.end for s in pl.shards)
        assert m.start % 64 == 0 and m.end % 64 == 0
    p.verify()
    assert make_policy("total_tokens", c).rebalance(10**9) == []
