"""The prefix directory and the prefix-weighed home choice (planner/prefix.py, issue 26)."""

import random

import pytest

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.planner.prefix import PrefixDirectory, chain_keys, prefix_home, split_home
from sglang_dcp.types import Placement, Request

QW = load_profile("qwen3-235b-h200")


def _ids(n, seed=0):
    rng = random.Random(seed)
    return [rng.randrange(3, 50_000) for _ in range(n)]


def test_a_key_names_the_whole_prefix_up_to_its_block():
    a = _ids(256, 1)
    b = list(a)
    b[3] += 1  # one token in the first block differs: every later key differs too
    ka, kb = chain_keys(a, 64), chain_keys(b, 64)
    assert len(ka) == 4 and not set(ka) & set(kb)
    assert chain_keys(a[:200], 64) == ka[:3]  # the partial last block has no key
    assert chain_keys(a + _ids(64, 2), 64)[:4] == ka


def test_match_is_the_longest_run_held_per_rank():
    d = PrefixDirectory([10_000] * 3, block=64)
    base = _ids(640, 3)
    d.record(1, d.keys(base))
    d.record(2, d.keys(base[:192]))
    assert d.match(d.keys(base + _ids(100, 4))) == [0, 640, 192]
    other = _ids(640, 5)
    assert d.match(d.keys(other)) == [0, 0, 0]
    d.forget(1, d.keys(base)[5:])
    assert d.match(d.keys(base)) == [0, 320, 192]


def test_each_rank_keeps_its_capacity_least_recent_out():
    d = PrefixDirectory([256, 10_000], block=64)  # rank 0: 4 keys
    a, b = _ids(256, 6), _ids(128, 7)
    d.record(0, d.keys(a))
    d.record(1, d.keys(a))
    d.record(0, d.keys(b))  # a's two oldest (shallowest) keys go: its chain is broken
    assert d.held(0) == 4
    assert d.match(d.keys(a)) == [0, 256] and d.match(d.keys(b)) == [128, 0]


def test_prefix_home_weighs_saved_prefill_against_imbalance():
    pf = QW.prefill_us
    # equal steps: the cached rank wins
    assert prefix_home([10.0, 10.0, 10.0], [0, 4096, 0], prompt_len=5000, decode_steps=100,
                       prefill_us=pf) == 1
    # nothing cached, or the cached rank has no room: the policy chooses
    assert prefix_home([10.0, 10.0], [0, 0], prompt_len=5000, decode_steps=100,
                       prefill_us=pf) is None
    assert prefix_home([10.0, None], [0, 4096], prompt_len=5000, decode_steps=100,
                       prefill_us=pf) is None
    # the saving of 4096 tokens against 1 us more per step: depends on the decode length
    saved = pf(5000) - pf(5000 - 4096)
    steps = int(saved) + 1000
    assert prefix_home([10.0, 11.0], [0, 4096], prompt_len=5000, decode_steps=steps,
                       prefill_us=pf) is None
    assert prefix_home([10.0, 11.0], [0, 4096], prompt_len=5000, decode_steps=int(saved) - 1000,
                       prefill_us=pf) == 1
    # the longer cached prefix wins at equal balance
    assert prefix_home([10.0, 10.0, 10.0], [1024, 4096, 2048], prompt_len=5000,
                       decode_steps=10, prefill_us=pf) == 1


@pytest.mark.parametrize("loaded", [False, True])
def test_whole_steps_agree_with_the_policys_own_prediction(loaded):
    p = make_policy("dcp", ClusterSpec.uniform(4, 64 * 1000, 64), QW)
    if loaded:
        for r, n in enumerate((30_000, 5_000, 12_000, 0)):
            if n:
                assert isinstance(p.admit(Request(f"f{r}", n, 0), home_rank=r), Placement)
    big = p.whole_steps(64 * 1000)  # whole only on an empty rank
    assert [s is not None for s in big] == [not loaded, not loaded, not loaded, True]
    resv = 2048
    steps = p.whole_steps(resv)
    assert all(s is not None for s in steps)
    # the policy's own choice is a rank of the lowest predicted step
    got = p.admit(Request("x", resv, 0))
    assert got.degree == 1 and steps[got.home_rank] == min(steps)


def test_a_request_split_anyway_is_homed_on_its_longest_cached_prefix():
    assert split_home([None, None, None], [64, 256, 256]) == 1  # ties to the lowest index
    assert split_home([None, None, None], [0, 0, 0]) is None  # no tree holds any
    assert split_home([None, 5.0, None], [0, 0, 256]) is None  # fits whole: prefix_home's
