"""The DP controller's prefix directory (issue 26): ``DcpDispatcher`` pins an unsplit request
to the rank whose tree holds its prefix when the balance allows (and a request split anyway
to the rank holding its longest prefix), records what it places whole,
and keeps no keys of requests it no longer holds. Without SGLang."""

import random
from types import SimpleNamespace

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.planner.prefix import PrefixDirectory
from sglang_dcp.sglang.dispatcher import DcpDispatcher

RANKS, CAP = 4, 4096


def _dispatcher(sent):
    policy = make_policy("dcp", ClusterSpec.uniform(RANKS, CAP, 1),
                         load_profile("qwen3-235b-h200"), max_degree=RANKS)  # fmt: skip
    return DcpDispatcher(
        policy, send=lambda rank, req, p: sent.append((req.rid, rank, p)),
        reject=lambda req, reason: sent.append((req.rid, None, reason)),
        active_ranks=lambda: range(RANKS), queue=True,
        prefixes=PrefixDirectory([CAP] * RANKS),
    )  # fmt: skip


def _req(rid, ids, max_new=4, home=None):
    return SimpleNamespace(rid=rid, input_ids=ids, routed_dp_rank=home,
                           sampling_params=SimpleNamespace(max_new_tokens=max_new))


def _ids(n, seed):
    rng = random.Random(seed)
    return [rng.randrange(3, 500) for _ in range(n)]


def test_the_next_turn_goes_to_the_rank_holding_its_prefix():
    sent = []
    d = _dispatcher(sent)
    first = _ids(600, 1)
    d.dispatch(_req("t1", first, home=2))  # pinned by the client: recorded all the same
    d.finished(["t1"])
    d.dispatch(_req("t2", first + _ids(100, 2)))
    assert sent[-1][:2] == ("t2", 2)
    d.finished(["t2"])
    d.dispatch(_req("other", _ids(600, 3)))  # nothing cached: the policy's own choice
    assert sent[-1][1] != 2 or d.prefixes.match(d.prefixes.keys(_ids(600, 3)))[2] == 0
    assert not d._keys  # nothing kept for requests it placed


def test_a_turn_that_must_split_is_homed_where_its_prefix_lies():
    sent = []
    d = _dispatcher(sent)
    first = _ids(600, 8)
    d.dispatch(_req("s1", first))
    home = sent[-1][1]
    assert sent[-1][2].degree == 1
    d.finished(["s1"])
    d.dispatch(_req("s2", first + _ids(CAP, 9)))  # fits whole on no rank
    rid, rank, p = sent[-1]
    assert rid == "s2" and rank == home and p.home_rank == home and p.degree > 1


def test_balance_can_outweigh_the_cached_prefix():
    sent = []
    d = _dispatcher(sent)
    short = _ids(128, 4)
    d.dispatch(_req("a", short, home=1))
    d.finished(["a"])
    for i in range(6):  # rank 1 gets busy (it still has room for the next request)
        d.dispatch(_req(f"busy{i}", _ids(64, 10 + i), max_new=16, home=1))
    # a long decode: the extra step time over 3000 steps outweighs 128 cached tokens
    d.dispatch(_req("b", short + _ids(16, 5), max_new=3000))
    assert d.policy.whole_steps(144 + 3000)[1] is not None
    assert sent[-1][0] == "b" and sent[-1][1] not in (None, 1)


def test_a_rejected_or_dropped_request_leaves_no_keys():
    sent = []
    d = _dispatcher(sent)
    d.dispatch(_req("huge", _ids(5 * CAP, 6)))  # never fits: answered at once
    assert sent[-1][1] is None and not d._keys
    fill = [_req(f"f{r}", _ids(CAP - 64, 20 + r), home=r) for r in range(RANKS)]
    for f in fill:
        d.dispatch(f)
    d.dispatch(_req("waits", _ids(1000, 7)))  # the cluster is full: it waits, keys kept
    assert "waits" in d.queue
    d.drop_queued("waits")
    assert not d._keys
