"""The planner in SGLang's DP controller, without processes (reference §4.5 T1): a controller
made with ``object.__new__``, ``sock_send`` and ``get_zmq_socket`` monkeypatched, real SGLang
request and message types pushed through its real ``_request_dispatcher``."""

from __future__ import annotations

import warnings
from array import array
from types import SimpleNamespace

import pytest

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)

from sglang.srt.managers import io_struct  # noqa: E402
from sglang.srt.managers.data_parallel_controller import DataParallelController  # noqa: E402
from sglang.srt.managers.io_struct import AbortReq, TokenizedGenerateReqInput  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402

from sglang_dcp import env  # noqa: E402
from sglang_dcp.planner import ClusterSpec, make_policy  # noqa: E402
from sglang_dcp.sglang import dpc, plugin  # noqa: E402
from sglang_dcp.sglang.messages import (  # noqa: E402
    DcpFinished,
    DcpGenerateReq,
    DcpPlannerView,
)
from sglang_dcp.sglang.options import DcpOptions  # noqa: E402
from sglang_dcp.types import Request  # noqa: E402

NUM_RANKS = 2
KV_PER_RANK = 4096
TOKENIZER_IPC = "ipc:///tmp/tokenizer-test"


def make_req(rid, prompt_len, max_new=8, routed_dp_rank=None):
    return TokenizedGenerateReqInput(
        rid=rid, input_text=None, input_ids=list(range(prompt_len)), mm_inputs=None,
        sampling_params=SamplingParams(max_new_tokens=max_new), return_logprob=False,
        logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None, stream=False,
        token_type_ids=None, input_embeds=None, routed_dp_rank=routed_dp_rank,
    )  # fmt: skip


@pytest.fixture
def sent(monkeypatch):
    """(destination, message) for every sock_send, in order."""
    log = []
    record = lambda sock, obj, flags=0: log.append((sock, obj))  # noqa: E731
    monkeypatch.setattr(io_struct, "sock_send", record)
    monkeypatch.setattr("sglang.srt.managers.data_parallel_controller.sock_send", record)
    monkeypatch.setattr(
        "sglang.srt.utils.network.get_zmq_socket",
        lambda ctx, kind, endpoint, bind: f"socket:{endpoint}",
    )
    return log


def make_controller(**over):
    c = object.__new__(DataParallelController)
    c.launch_dp_size = NUM_RANKS
    c.max_total_num_tokens = KV_PER_RANK
    c.server_args = SimpleNamespace(page_size=1)
    c.port_args = SimpleNamespace(tokenizer_ipc_name=TOKENIZER_IPC)
    c.context = None
    c.workers = [f"worker{r}" for r in range(NUM_RANKS)]
    c.status = [True] * NUM_RANKS
    c._active_workers = list(range(NUM_RANKS))
    c.control_message_step = 1
    c.refresh_load_budget_on_dispatch = False
    c.dispatching = None
    for k, v in over.items():
        setattr(c, k, v)
    c.init_dispatcher()
    return c


@pytest.fixture
def controller(sent, monkeypatch):
    monkeypatch.setenv(env.SERVE_OPTIONS_VAR, DcpOptions().to_json())
    c = make_controller()
    plugin._on_dp_controller_ready(None, c)  # the AFTER hook on __init__
    # the planner's first view to the schedulers (test_ledger.py); these tests follow requests
    views = [obj for _, obj in sent]  # send_control_message: every worker (control step 1)
    assert len(views) == NUM_RANKS and all(v == views[0] for v in views)
    assert views[0].inbox.startswith("tcp://127.0.0.1:") and views[0].kv_tokens == [0] * NUM_RANKS
    sent.clear()
    return c


def to_workers(sent):
    """(worker, rid) per request sent to a scheduler (a placed one is a DcpGenerateReq); not
    the planner's view (``DcpPlannerView``, ledger.py)."""
    return [
        (sock, obj.rid) for sock, obj in sent
        if sock.startswith("worker") and not isinstance(obj, DcpPlannerView)
    ]  # fmt: skip


def test_requests_go_where_the_planner_says(controller, sent):
    cluster = ClusterSpec.uniform(NUM_RANKS, KV_PER_RANK, 64)
    shadow = make_policy("dcp", cluster, DcpOptions().profile, max_degree=1)
    lengths = [5, 300, 40, 900, 7, 64, 1, 200]
    for i, n in enumerate(lengths):
        controller._request_dispatcher(make_req(f"r{i}", n))
    expected = [
        (f"worker{shadow.admit(Request(f'r{i}', n, 8)).home_rank}", f"r{i}")
        for i, n in enumerate(lengths)
    ]
    assert to_workers(sent) == expected
    assert {sock for sock, _ in expected} == {"worker0", "worker1"}
    planner = controller.dcp_dispatcher.policy
    assert planner.kv_tokens() == shadow.kv_tokens() and len(planner) == len(lengths)
    assert all(planner.placement(f"r{i}").degree == 1 for i in range(len(lengths)))


def test_finish_notices_return_the_planner_to_zero(controller, sent):
    for i in range(6):
        controller._request_dispatcher(make_req(f"r{i}", 50 * i + 1))
    planner = controller.dcp_dispatcher.policy
    assert len(planner) == 6 and sum(planner.kv_tokens()) > 0
    controller._request_dispatcher(DcpFinished(rids=["r0", "r1", "unknown", "r1"]))
    assert len(planner) == 4
    controller._request_dispatcher(DcpFinished(rids=[f"r{i}" for i in range(6)]))
    assert len(planner) == 0 and planner.kv_tokens() == [0] * NUM_RANKS
    planner.verify()


def test_finish_notice_survives_the_wire(controller, sent):
    from sglang_dcp.sglang.messages import register_types

    register_types()
    controller._request_dispatcher(make_req("a", 10))
    wire = io_struct.msgpack_decode(io_struct.msgpack_encode(DcpFinished(rids=["a"])))
    controller._request_dispatcher(wire)
    assert len(controller.dcp_dispatcher.policy) == 0


@pytest.mark.parametrize("rank", range(NUM_RANKS))
def test_routed_dp_rank_pins_the_home(controller, sent, rank):
    for i in range(4):
        controller._request_dispatcher(make_req(f"p{i}", 30, routed_dp_rank=rank))
    assert to_workers(sent) == [(f"worker{rank}", f"p{i}") for i in range(4)]
    assert controller.dcp_dispatcher.policy.batch_sizes()[rank] == 4


def _aborts(sent):
    return [(sock, obj) for sock, obj in sent if isinstance(obj, AbortReq)]


def test_a_request_that_can_never_fit_is_answered_400_and_never_dispatched(controller, sent):
    controller._request_dispatcher(make_req("huge", KV_PER_RANK + 1000, max_new=8))
    assert to_workers(sent) == []
    [(sock, abort)] = _aborts(sent)
    assert sock == f"socket:{TOKENIZER_IPC}" and abort.rid == "huge"
    assert abort.finished_reason["status_code"] == 400
    assert "planner rejected" in abort.finished_reason["message"]
    assert len(controller.dcp_dispatcher.policy) == 0


def test_an_inactive_routed_rank_is_answered_400(sent, monkeypatch):
    monkeypatch.setenv(env.SERVE_OPTIONS_VAR, DcpOptions().to_json())
    c = make_controller(_active_workers=[0])
    plugin._on_dp_controller_ready(None, c)
    sent.clear()  # the planner's first view
    c._request_dispatcher(make_req("x", 10, routed_dp_rank=1))
    assert to_workers(sent) == []
    [(_, abort)] = _aborts(sent)
    assert "DP rank 1 is not active" in abort.finished_reason["message"]


def test_a_full_cluster_queues_in_the_dp_controller_until_a_finish(controller, sent):
    big = KV_PER_RANK - 64
    controller._request_dispatcher(make_req("a", big, max_new=8))
    controller._request_dispatcher(make_req("b", big, max_new=8))
    controller._request_dispatcher(make_req("c", 100, max_new=8))  # fits nowhere now, later yes
    d = controller.dcp_dispatcher
    assert "c" not in d.policy and list(d.queue) == ["c"] and d.num_overflow == 0
    assert [rid for _, rid in to_workers(sent)] == ["a", "b"] and not _aborts(sent)
    controller._request_dispatcher(DcpFinished(rids=["a"]))
    assert not d.queue and "c" in d.policy
    assert [rid for _, rid in to_workers(sent)] == ["a", "b", "c"]
    controller._request_dispatcher(DcpFinished(rids=["b", "c"]))
    assert len(d.policy) == 0 and d.policy.kv_tokens() == [0] * NUM_RANKS


def test_the_queue_bound_comes_from_the_flags(sent, monkeypatch):
    monkeypatch.setenv(env.SERVE_OPTIONS_VAR, DcpOptions(queue_max_bypass=3).to_json())
    c = make_controller()
    plugin._on_dp_controller_ready(None, c)
    assert c.dcp_dispatcher.queue_enabled and c.dcp_dispatcher.max_bypass == 3


def test_an_abort_of_a_waiting_request_is_answered_here_and_forwarded(controller, sent):
    big = KV_PER_RANK - 64
    for rid in ("a", "b"):
        controller._request_dispatcher(make_req(rid, big, max_new=8))
    controller._request_dispatcher(make_req("wait-1", 100, max_new=8))
    controller._request_dispatcher(make_req("wait-2", 100, max_new=8))
    sent.clear()
    controller._request_dispatcher(AbortReq(rid="wait-1"))
    d = controller.dcp_dispatcher
    assert list(d.queue) == ["wait-2"]
    [(sock, answer)] = [(s, o) for s, o in _aborts(sent) if s.startswith("socket:")]
    assert answer.rid == "wait-1" and answer.finished_reason["type"] == "abort"
    # the abort still reaches every scheduler, as SGLang's DP controller sends it
    assert sorted(s for s, o in sent if s.startswith("worker")) == ["worker0", "worker1"]
    sent.clear()
    controller._request_dispatcher(AbortReq(abort_all=True))
    assert not d.queue and [o.rid for s, o in _aborts(sent) if s.startswith("socket:")] == ["wait-2"]


def test_policy_off_leaves_sglangs_dispatch(sent, monkeypatch):
    monkeypatch.delenv(env.SERVE_OPTIONS_VAR, raising=False)
    c = make_controller()
    before = c.dispatching
    plugin._on_dp_controller_ready(None, c)
    assert c.dispatching is before and not hasattr(c, "dcp_dispatcher")


@pytest.mark.parametrize("policy", ["round_robin", "total_tokens", "uniform"])
def test_baseline_policies_serve_too(sent, monkeypatch, policy):
    monkeypatch.setenv(env.SERVE_OPTIONS_VAR, DcpOptions(policy=policy).to_json())
    c = make_controller()
    plugin._on_dp_controller_ready(None, c)
    for i in range(4):
        c._request_dispatcher(make_req(f"r{i}", 20))
    assert len(to_workers(sent)) == 4
    c._request_dispatcher(DcpFinished(rids=[f"r{i}" for i in range(4)]))
    assert c.dcp_dispatcher.policy.kv_tokens() == [0] * NUM_RANKS


@pytest.mark.parametrize("policy", ["round_robin", "total_tokens"])
def test_baseline_overflow_waits_for_its_rank_and_finish_drops_it(sent, monkeypatch, policy):
    """A baseline that picks a full rank keeps the request waiting for that rank: the request
    goes there, and its finish notice drops the waiting entry (no load left behind)."""
    monkeypatch.setenv(env.SERVE_OPTIONS_VAR, DcpOptions(policy=policy).to_json())
    c = make_controller()
    plugin._on_dp_controller_ready(None, c)
    big = KV_PER_RANK - 64
    c._request_dispatcher(make_req("a", big))
    c._request_dispatcher(make_req("b", big))
    c._request_dispatcher(make_req("c", 100))  # both ranks full: waits for the rank chosen
    pol = c.dcp_dispatcher.policy
    waiting = pol.waiting_rank("c")
    assert waiting is not None and to_workers(sent)[-1] == (f"worker{waiting}", "c")
    c._request_dispatcher(DcpFinished(rids=["c", "a", "b"]))
    assert pol.waiting_rank("c") is None and len(pol) == 0
    assert pol.kv_tokens() == [0] * NUM_RANKS


def test_planner_page_is_a_multiple_of_sglangs():
    assert dpc.planner_page(1) == 64 and dpc.planner_page(16) == 64
    assert dpc.planner_page(48) == 192 and dpc.planner_page(None) == 64


def test_health_probes_are_routed_without_a_reservation(controller, sent):
    # A busy scheduler drops them unanswered (scheduler.py:2093): no finish would free them.
    controller._request_dispatcher(make_req("HEALTH_CHECK_abc", 1, max_new=1))
    controller._request_dispatcher(make_req("HEALTH_CHECK_def", 1, max_new=1, routed_dp_rank=1))
    assert [rid for _, rid in to_workers(sent)] == ["HEALTH_CHECK_abc", "HEALTH_CHECK_def"]
    assert to_workers(sent)[1][0] == "worker1"
    assert len(controller.dcp_dispatcher.policy) == 0


def test_a_placed_request_travels_with_its_placement(controller, sent):
    from sglang_dcp.sglang.messages import register_types

    register_types()
    req = make_req("r", 40, routed_dp_rank=1)
    req.input_ids = array("i", req.input_ids)  # as the tokenizer manager sends it
    controller._request_dispatcher(req)
    [(sock, msg)] = sent
    assert sock == "worker1" and isinstance(msg, DcpGenerateReq)
    assert msg.placement() == controller.dcp_dispatcher.policy.placement("r")
    # every field of SGLang's request survives, and the wire keeps the subclass (a fresh
    # request: this test's DP controller leaves a bare time-stats object on the dispatched one)
    assert all(getattr(msg, f) is getattr(req, f) for f in req.__struct_fields__)
    fresh = make_req("r", 40, routed_dp_rank=1)
    fresh.input_ids = array("i", fresh.input_ids)
    wire = io_struct.msgpack_decode(
        io_struct.msgpack_encode(DcpGenerateReq.wrap(fresh, msg.placement()))
    )
    assert type(wire) is DcpGenerateReq and wire.placement() == msg.placement()
    assert list(wire.input_ids) == list(req.input_ids)


def test_untracked_requests_travel_alone(controller, sent):
    controller._request_dispatcher(make_req("HEALTH_CHECK_x", 1, max_new=1))
    for rid in ("a", "b"):
        controller._request_dispatcher(make_req(rid, 100))
    kinds = {rid: type(m).__name__ for (s, m), (_, rid) in zip(sent, to_workers(sent))}
    assert kinds == {"HEALTH_CHECK_x": "TokenizedGenerateReqInput", "a": "DcpGenerateReq",
                     "b": "DcpGenerateReq"}  # fmt: skip
