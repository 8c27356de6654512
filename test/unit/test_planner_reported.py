"""The planner's books follow the ranks' reports (planner/reported.py): a failed shard move keeps
its range on the home, and ``restate`` moves it there in every per-rank aggregate."""

import pytest

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.types import Placement, Request, Shard

PAGE = 64
CAP = 1024
PROMPT = 2600  # dcp: two sealed shards and the tail; uniform: three


def split_policy(name="dcp"):
    cluster = ClusterSpec.uniform(4, CAP, PAGE)
    if name == "dcp":
        p = make_policy("dcp", cluster, load_profile("deepseek-v3-h200"), max_degree=4,
                        min_shard_tokens=PAGE)  # fmt: skip
    else:
        p = make_policy(name, cluster)
    placed = p.admit(Request("long", PROMPT, 8))
    assert isinstance(placed, Placement) and placed.degree > 1, placed
    return p, placed


def sealed(placement):
    return [(s.rank, s.start, s.end) for s in placement.shards[:-1]]


def books(p):
    return (p.kv_tokens(), p.kv_used(), p.batch_sizes(), p.guest_items(), p.guest_out(),
            p.guest_near(), p.guest_kv_tokens())  # fmt: skip


@pytest.mark.parametrize("name", ["dcp", "uniform"])
def test_every_move_failed_puts_the_whole_request_on_its_home(name):
    p, placed = split_policy(name)
    home = placed.home_rank
    at_home = [(home, s, e) for _, s, e in sealed(placed)]
    assert p.guest_kv_tokens() != [0] * 4
    assert p.restate("long", at_home)
    p.verify()
    now = p.placement("long")
    assert now.degree == 1 and now.shards == (Shard(home, 0, PROMPT),)
    assert p.guest_kv_tokens() == [0] * 4 and p.guest_items() == [0] * 4
    kv = p.kv_tokens()
    assert kv[home] == -(-(PROMPT + 8) // PAGE) * PAGE and sum(kv) == kv[home]
    assert not p.restate("long", at_home)  # the same report again changes nothing
    p.finish("long")
    p.verify()
    assert p.kv_tokens() == [0] * 4 and p.kv_used() == [0] * 4


def test_one_failed_shard_stays_home_and_a_later_success_restores_the_plan():
    p, placed = split_policy()
    fresh = books(p)
    shards = sealed(placed)
    home = placed.home_rank
    r0, s0, e0 = shards[0]
    report = [(home, s0, e0), *shards[1:]]
    assert p.restate("long", report)
    p.verify()
    assert p.guest_kv_tokens()[r0] == fresh[-1][r0] - (e0 - s0)
    assert p.kv_tokens()[home] == fresh[0][home] + (e0 - s0)
    assert sealed(p.placement("long"))[0] == (home, s0, e0)
    # a retracted request ships again; this time the move succeeds
    assert p.restate("long", shards)
    p.verify()
    assert books(p) == fresh


def test_a_rank_over_its_budget_is_what_the_allocator_holds():
    p, placed = split_policy()
    home = placed.home_rank
    p.restate("long", [(home, s, e) for _, s, e in sealed(placed)])
    assert p.kv_tokens()[home] > CAP and p.free_kv()[home] < 0
    p.verify()  # over budget after a report is the truth, not drift
    # nothing more goes to the full home; a short request finds room elsewhere
    short = p.admit(Request("short", 100, 8))
    assert isinstance(short, Placement) and short.home_rank != home


def test_reports_that_do_not_tile_the_sealed_prefix_are_refused_and_change_nothing():
    p, placed = split_policy()
    before = books(p)
    shards = sealed(placed)
    (r, s, e), rest = shards[0], shards[1:]
    bad = [
        [(r, s + PAGE, e), *rest],  # a gap at 0
        [(r, s, e - 1), *rest],  # not page aligned
        [(9, s, e), *rest],  # no such rank
        [*shards, (r, shards[-1][2], 4096)],  # past the request's KV
    ]
    for report in bad:
        with pytest.raises(ValueError, match="long"):
            p.restate("long", report)
        assert books(p) == before


def test_a_report_for_a_finished_request_is_ignored():
    p, placed = split_policy()
    p.finish("long")
    assert not p.restate("long", [(placed.home_rank, 0, PAGE)])
    assert p.kv_tokens() == [0] * 4


def test_baselines_hold_no_guest_kv():
    p = make_policy("round_robin", ClusterSpec.uniform(4, CAP, PAGE))
    p.admit(Request("a", 300, 8))
    assert p.guest_kv_tokens() == [0] * 4
    assert not p.restate("a", [])  # nothing sealed: nothing to change
