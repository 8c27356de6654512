"""Injected shard-move failures (exchange/faults.py, ``SGLANG_DCP_INJECT_MOVE_FAILURE``): a pure
function of the move, so every rank agrees and reruns fail the same moves."""

import pytest

from sglang_dcp import env
from sglang_dcp.exchange.faults import PHASES, move_fault, move_faults
from sglang_dcp.exchange.transfer import ShardMove

MOVES = [ShardMove(f"req-{i}", i % 4, (i + 1) % 4, 64 * (i % 7), 64 * (i % 7 + 1))
         for i in range(2000)]  # fmt: skip


def test_the_fraction_and_every_failure_point():
    assert all(move_fault(m, 1.0) in PHASES for m in MOVES)
    assert all(move_fault(m, 0.0) is None for m in MOVES)
    half = [move_fault(m, 0.5) for m in MOVES]
    assert 0.45 < sum(p is not None for p in half) / len(MOVES) < 0.55
    assert {p for p in half if p is not None} == set(PHASES)
    # a move that fails at P fails at every larger P, at the same point
    assert all(move_fault(m, 0.8) is p for m, p in zip(MOVES, half) if p is not None)


def test_the_same_move_fails_the_same_way_every_time():
    again = [ShardMove(m.rid, m.src, m.dst, m.start, m.end) for m in MOVES[:50]]
    assert [move_fault(m, 0.5) for m in MOVES[:50]] == [move_fault(m, 0.5) for m in again]


def test_the_hook_fails_each_chosen_move_at_exactly_one_point():
    hook = move_faults(MOVES[:100], 0.5)
    for i, m in enumerate(MOVES[:100]):
        hits = [ph for ph in PHASES if hook(ph, i)]
        assert hits == ([] if move_fault(m, 0.5) is None else [move_fault(m, 0.5)])
    assert move_faults(MOVES, 0.0) is None


@pytest.mark.parametrize("value,want", [("", 0.0), ("0", 0.0), ("0.5", 0.5), ("1", 1.0)])
def test_the_variable(monkeypatch, value, want):
    monkeypatch.setenv(env.INJECT_MOVE_FAILURE_VAR, value)
    assert env.inject_move_failure() == want


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_a_bad_value_says_what_to_set(monkeypatch, value):
    monkeypatch.setenv(env.INJECT_MOVE_FAILURE_VAR, value)
    with pytest.raises(ValueError, match="SGLANG_DCP_INJECT_MOVE_FAILURE=.*between 0 and 1"):
        env.inject_move_failure()


def test_the_rid_rule_fails_a_requests_moves_from_a_token_on():
    moves = [ShardMove("fail-1", 0, 1, a, a + 32) for a in range(0, 256, 32)]
    moves += [ShardMove("ok-1", 0, 1, a, a + 32) for a in range(0, 256, 32)]
    hook = move_faults(moves, 0.0, ("fail-", 64))
    failing = [m for i, m in enumerate(moves) if any(hook(ph, i) for ph in PHASES)]
    assert failing == [m for m in moves if m.rid == "fail-1" and m.start >= 64]


@pytest.mark.parametrize("value,want", [("", None), ("fail-@64", ("fail-", 64)),
                                        ("a@b@0", ("a@b", 0))])  # fmt: skip
def test_the_rid_variable(monkeypatch, value, want):
    monkeypatch.setenv(env.INJECT_MOVE_FAILURE_RID_VAR, value)
    assert env.inject_move_failure_rid() == want


@pytest.mark.parametrize("value", ["fail-", "@64", "fail-@x"])
def test_a_bad_rid_rule_says_what_to_set(monkeypatch, value):
    monkeypatch.setenv(env.INJECT_MOVE_FAILURE_RID_VAR, value)
    with pytest.raises(ValueError, match="PREFIX@TOKEN"):
        env.inject_move_failure_rid()
