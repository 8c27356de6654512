"""The DP controller gives the planner its clock, and retries its queue on it: ``dcp``'s time windows (``exchange_room_ms``,
``live_quiet_ms``, ``age_ms``) run on the server as in the simulator, which calls
``Policy.on_time`` at every event. Without it the server's planner stayed at t = 0: a window
opened once never closed (or never reopened)."""

from __future__ import annotations

from types import SimpleNamespace

from sglang_dcp.planner import ClusterSpec, make_policy
from sglang_dcp.sglang.dispatcher import DcpDispatcher

RANKS, KV, PAGE = 2, 1024, 64


def req(rid: str, prompt: int, max_new: int = 8):
    return SimpleNamespace(
        rid=rid, input_ids=[1] * prompt, sampling_params=SimpleNamespace(max_new_tokens=max_new)
    )


def recorded(policy):
    """``policy`` with its ``on_time`` and ``admit`` calls logged in order (``policy.calls``)."""
    policy.calls = []
    on_time, admit = policy.on_time, policy.admit

    def rec_on_time(now_ms, step):
        policy.calls.append(("on_time", now_ms, step))
        on_time(now_ms, step)

    def rec_admit(request, home_rank=None):
        policy.calls.append(("admit", request.rid))
        return admit(request, home_rank)

    policy.on_time, policy.admit = rec_on_time, rec_admit
    return policy


def harness(now: list[float]):
    policy = recorded(make_policy("dcp", ClusterSpec.uniform(RANKS, KV, PAGE), "qwen3-235b-h200",
                                  step_slo_ms=50.0))
    placed: list[str] = []
    d = DcpDispatcher(policy, send=lambda rank, r, p: placed.append(r.rid),
                      reject=lambda r, reason: None, active_ranks=lambda: range(RANKS),
                      queue=True, clock=lambda: now[0])
    return d, policy, placed


def test_every_batch_of_admissions_sees_the_clock_first():
    now = [100.0]
    d, policy, placed = harness(now)
    d.dispatch(req("a", 900))
    d.dispatch(req("b", 900))
    now[0] = 102.5
    d.dispatch(req("c", 900))  # the cluster is full: it waits
    assert "c" in d.queue
    now[0] = 104.0
    d.finished(["a"])  # drain: "c" is placed
    assert placed == ["a", "b", "c"]
    ticks = [c for c in policy.calls if c[0] == "on_time"]
    assert [t[1] for t in ticks] == [100_000.0, 100_000.0, 102_500.0, 104_000.0]
    for i, c in enumerate(policy.calls):  # each admit comes after a tick at its time
        if c[0] == "admit":
            assert any(p[0] == "on_time" for p in policy.calls[:i])
    assert policy._now_ms == 104_000.0  # the budget's windows (budget.py) run on it


def test_the_default_clock_is_monotonic_and_in_milliseconds():
    policy = recorded(make_policy("dcp", ClusterSpec.uniform(RANKS, KV, PAGE), "qwen3-235b-h200"))
    d = DcpDispatcher(policy, send=lambda *a: None, reject=lambda *a: None,
                      active_ranks=lambda: range(RANKS), queue=True)
    d.dispatch(req("a", 100))
    d.dispatch(req("b", 100))
    (_, t0, _), (_, t1, _) = [c for c in policy.calls if c[0] == "on_time"]
    assert 0 <= t1 - t0 < 60_000.0


# The queue retries on time, not only on finishes (wait_queue.py): a refusal that names when
# time alone may change it (Rejection.retry_at_ms) is retried by ``poll`` then.
NODE_CAP, NODE_PAGE, RPN = 1024, 64, 8


def two_nodes(now: list[float]):
    """``dcp`` over 2 nodes of 8 ranks, every rank filled whole to leave 128 tokens free."""
    from sglang_dcp.types import Rejection, Request

    cl = ClusterSpec.uniform(2 * RPN, NODE_CAP, NODE_PAGE, ranks_per_node=RPN)
    policy = make_policy("dcp", cl, "deepseek-v3-h200", max_degree=2 * RPN,
                         min_shard_tokens=NODE_PAGE, cross_wait_ms=1500)  # fmt: skip
    for r in range(2 * RPN):
        assert not isinstance(policy.admit(Request(f"fill{r}", NODE_CAP - 136, 8), r), Rejection)
    placed: list = []
    d = DcpDispatcher(policy, send=lambda rank, r, p: placed.append((r.rid, p)),
                      reject=lambda r, reason: placed.append((r.rid, reason)),
                      active_ranks=lambda: range(2 * RPN), queue=True, clock=lambda: now[0])
    return d, policy, placed


def test_a_timed_wait_is_retried_on_time_with_nothing_finishing():
    now = [10.0]
    d, policy, placed = two_nodes(now)
    d.dispatch(req("big", 1528))  # more than a node's 8 x 128 free: it waits to cross
    assert "big" in d.queue and not placed
    assert d._retry_at_ms == 10_000.0 + policy.cross_wait_ms
    now[0] = 11.0
    assert not d.poll() and "big" in d.queue  # too soon: not even retried
    now[0] = 10.0 + policy.cross_wait_ms / 1e3
    assert d.poll()  # nothing finished; the wait is over
    (rid, placement), = placed
    assert rid == "big" and len({s.rank // RPN for s in placement.shards}) == 2
    assert not d.queue and d._retry_at_ms is None and not d.poll()
    policy.verify()


def test_poll_is_idle_without_a_timed_wait():
    now = [0.0]
    d, policy, placed = harness(now)
    d.dispatch(req("a", 900))
    d.dispatch(req("b", 900))
    d.dispatch(req("c", 900))  # the cluster is full: only a finish can help
    assert "c" in d.queue and d._retry_at_ms is None
    calls = len(policy.calls)
    now[0] = 3600.0
    assert not d.poll() and len(policy.calls) == calls
