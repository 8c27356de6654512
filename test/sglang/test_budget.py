"""The reservation the DP controller gives a request (``DcpDispatcher``): never more than SGLang
will decode, and for an unset ``max_new_tokens`` the most the planner could ever hold, written
into the request so its home stops there (``finish_reason: length``); a request that can never
be placed is refused by its binding limit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_dcp.planner import ClusterSpec, make_policy
from sglang_dcp.sglang.dispatcher import DcpDispatcher
from sglang_dcp.sglang.fit import page_up, sglang_max_new_bound

RANKS, KV, PAGE = 4, 1024, 64
CONTEXT = 8192


def req(rid, prompt, max_new, home=None):
    return SimpleNamespace(rid=rid, input_ids=[1] * prompt, routed_dp_rank=home,
                           sampling_params=SimpleNamespace(max_new_tokens=max_new))  # fmt: skip


def harness(policy_name, **options):
    profile = "qwen3-235b-h200" if policy_name == "dcp" else None
    def new_policy():
        return make_policy(policy_name, ClusterSpec.uniform(RANKS, KV, PAGE), profile, **options)

    policy = new_policy()
    out = SimpleNamespace(sent=[], rejected=[])
    out.d = DcpDispatcher(
        policy,
        send=lambda rank, r, placement: out.sent.append((rank, r, placement)),
        reject=lambda r, reason: out.rejected.append((r.rid, reason)),
        active_ranks=lambda: range(RANKS),
        queue=policy_name in ("dcp", "uniform"),
        empty_policy=new_policy,
        max_new_bound=lambda p: sglang_max_new_bound(
            p, max_req_len=CONTEXT - 1, pool_tokens=100_000, page=1),
    )  # fmt: skip
    return out


def test_sglangs_bound():
    # context: max_req_len - prompt - 1; pool: pool - page_up(prompt) - page - 1
    assert sglang_max_new_bound(2, max_req_len=8191, pool_tokens=10**6, page=1) == 8188
    assert sglang_max_new_bound(100, max_req_len=8191, pool_tokens=1000, page=64) == 1000 - 128 - 65
    assert sglang_max_new_bound(9000, max_req_len=8191, pool_tokens=10**6, page=1) == 0
    assert sglang_max_new_bound(2, max_req_len=8191, pool_tokens=10**6, page=1, limit=50) == 50


@pytest.mark.parametrize("policy", ["dcp", "round_robin", "total_tokens", "uniform"])
@pytest.mark.parametrize("prompt", [2, 300, 1000])
def test_unset_max_new_tokens_reserves_what_the_planner_can_keep(policy, prompt):
    h = harness(policy, **({"max_degree": RANKS} if policy == "dcp" else {}))
    r = req("u", prompt, None)
    h.d.dispatch(r)
    assert not h.rejected, h.rejected
    (rank, sent, placement), = h.sent
    stamped = sent.sampling_params.max_new_tokens
    assert stamped is not None and stamped > 0
    assert stamped == h.d.fit_max_new(prompt)
    # the reservation is the whole request at its stamped budget, and no rank goes over
    assert all(kv <= KV for kv in h.d.policy.kv_tokens())
    # one token more could never be placed
    assert not h.d._ever_fits(prompt, stamped + 1, None)


def test_a_long_prompt_unset_is_spread_and_its_tail_bounded():
    h = harness("dcp", max_degree=RANKS, min_shard_tokens=128)
    h.d.dispatch(req("long", 3000, None))
    (rank, sent, placement), = h.sent
    assert placement.degree > 1
    m = sent.sampling_params.max_new_tokens
    tail = page_up(3000 + m, PAGE) - (3000 // PAGE) * PAGE
    assert 0 < tail <= KV and all(kv <= KV for kv in h.d.policy.kv_tokens())


def test_an_explicit_budget_over_the_limit_names_the_limit():
    h = harness("dcp", max_degree=RANKS)
    h.d.dispatch(req("big", 2, 1500))
    (rid, reason), = h.rejected
    assert "max_new_tokens 1500 cannot be reserved" in reason
    assert "at most 1022 new tokens fit" in reason and f"holds {KV} KV tokens" in reason
    assert "even when empty" not in reason


def test_a_prompt_that_can_never_fit_keeps_the_planners_reason():
    h = harness("round_robin")
    h.d.dispatch(req("huge", 5000, None))
    (rid, reason), = h.rejected
    assert "never splits" in reason


def test_an_explicit_budget_is_capped_by_sglangs_bound():
    h = harness("dcp", max_degree=RANKS)
    assert h.d._request(req("x", 2, 10**9)).max_new_tokens == CONTEXT - 1 - 2 - 1
