"""What a split is charged for the exchange's fixed cost while guests already exist
(``DcpPolicy._fixed_for``, ``fixed_exchange``): ``"always"`` all of it, ``"first"`` none,
``"extend"`` the share of the new request's life that outlasts every live split's reservation;
``split_rule="auto"`` takes ``"extend"`` for GQA / MHA profiles."""

import pytest

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.types import Placement, Request

DS = load_profile("deepseek-v3-h200")
QW = load_profile("qwen3-235b-h200")
C = ClusterSpec.uniform(8, DS.kv_capacity_tokens, 64)
FIXED = DS.exchange_us_fixed


def _with_a_split(fixed_exchange, new=1024):  # 400k + 1024: whole pages, 1024 left
    p = make_policy("dcp", C, DS, split_rule="gain", fixed_exchange=fixed_exchange)
    got = p.admit(Request("live", 400_000, new))  # 10 ms of attention on one rank: split
    assert isinstance(got, Placement) and got.degree > 1
    return p


def test_the_charge_by_mode_and_by_what_the_live_splits_have_left():
    for mode in ("always", "first", "extend"):  # no guest: the first split starts it
        assert make_policy("dcp", C, DS, fixed_exchange=mode)._fixed_for(
            Request("x", 1, 100), False) == FIXED
    assert _with_a_split("always")._fixed_for(Request("x", 1, 4000), False) == FIXED
    assert _with_a_split("first")._fixed_for(Request("x", 1, 4000), False) == 0.0
    p = _with_a_split("extend")
    assert p._fixed_for(Request("x", 1, 512), False) == 0.0  # ends before the live split
    assert p._fixed_for(Request("x", 1, 4096), False) == pytest.approx(0.75 * FIXED)
    p.append("live", 624)  # 400 of its 1024 reserved tokens left
    assert p._fixed_for(Request("x", 1, 1000), False) == pytest.approx(0.6 * FIXED)
    p.verify()  # the split index follows the ledger
    p.finish("live")
    assert p._fixed_for(Request("x", 1, 1000), False) == FIXED
    p.verify()
    with pytest.raises(ValueError, match="fixed_exchange must be"):
        make_policy("dcp", C, DS, fixed_exchange="sometimes")


def test_auto_prices_the_fixed_cost_by_extension_on_gqa():
    assert (make_policy("dcp", C, QW, split_rule="auto").fixed_exchange,
            make_policy("dcp", C, DS, split_rule="auto").fixed_exchange) == ("extend", "always")


def test_a_split_that_would_outlive_the_live_ones_pays_for_the_steps_it_adds():
    """A straggler whose split gains more than its items but less than the fixed cost: free
    under ``"first"`` (split), charged under ``"always"`` (whole); under ``"extend"`` it is
    split when it ends before the live split, whole when it would outlive it by far."""
    def degree(mode, size, new):
        p = _with_a_split(mode)
        got = p.admit(Request("next", size, new))
        p.verify()
        return got.degree

    sizes = [s for s in range(8_000, 200_000, 4_000)
             if degree("first", s, 100) > 1 and degree("always", s, 100) == 1]
    assert sizes, "no straggler between the marginal price and the fixed cost"
    s = sizes[0]
    assert degree("extend", s, 100) > 1  # ends within the live split's 1024 tokens: free
    assert degree("extend", s, 100_000) == 1  # 99% of its life past it: charged ~all of it
