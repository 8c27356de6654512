"""A placed request reaches its home scheduler with its placement, and the home ``Req`` carries it
as ``req.dcp`` (placements.py). SGLang objects are made with ``object.__new__``; SGLang's own
``handle_batch_generate_request`` and ``TypeBasedDispatcher`` run for real."""

from __future__ import annotations

import warnings
from array import array
from types import SimpleNamespace

import pytest

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)

from sglang.srt.managers import io_struct  # noqa: E402
from sglang.srt.managers.io_struct import AbortReq, TokenizedGenerateReqInput  # noqa: E402
from sglang.srt.managers.schedule_batch import Req  # noqa: E402
from sglang.srt.managers.scheduler import Scheduler  # noqa: E402
from sglang.srt.managers.scheduler_components.request_receiver import (  # noqa: E402
    SchedulerRequestReceiver,
)
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402
from sglang.utils import TypeBasedDispatcher  # noqa: E402

from sglang_dcp.sglang import placements, rank_stats  # noqa: E402
from sglang_dcp.sglang.messages import (  # noqa: E402
    DcpPlacedBatch,
    DcpPlacementMsg,
    placed,
    register_types,
)
from sglang_dcp.types import Placement, Shard  # noqa: E402


def make_req(rid, n=8):
    return TokenizedGenerateReqInput(
        rid=rid, input_text=None, input_ids=array("q", range(n)), mm_inputs=None,
        sampling_params=SamplingParams(max_new_tokens=4), return_logprob=False,
        logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None, stream=False,
        token_type_ids=None, input_embeds=None,
    )  # fmt: skip


def placement(rid, home=1, degree=1):
    shards = tuple(Shard(r, 64 * i, 64 * (i + 1)) for i, r in enumerate(range(degree - 1)))
    return Placement(rid, home, shards + (Shard(home, 64 * (degree - 1), 64 * degree + 8),))


@pytest.fixture(autouse=True)
def fresh_stats(monkeypatch):
    monkeypatch.setattr(rank_stats, "_STATS", rank_stats.RankStats())


@pytest.fixture
def scheduler(monkeypatch):
    """A Scheduler with only what the hooks touch; ``handle_generate_request`` is replaced by a
    stand-in that makes a ``Req`` and, like SGLang's, queues it unless told otherwise."""
    monkeypatch.setattr(
        "sglang.srt.runtime_context.get_parallel", lambda: SimpleNamespace(dp_rank=1)
    )
    s = object.__new__(Scheduler)
    s._request_dispatcher = TypeBasedDispatcher(
        [(TokenizedGenerateReqInput, lambda r: s.handle_generate_request(r))]
    )
    s.grammar_manager = SimpleNamespace(grammar_queue=[])
    s.queued, s.fate = [], {}

    def handle_generate_request(recv_req):
        req = object.__new__(Req)
        req.rid = recv_req.rid
        fate = s.fate.get(req.rid, "queue")
        if fate == "grammar":  # grammar still compiling: queued later (scheduler.py:3838)
            s.grammar_manager.grammar_queue.append(req)
        elif fate == "queue":
            add_request_to_queue(req)
        # "error": answered without queueing (e.g. return_sampling_mask checks)

    def add_request_to_queue(req):  # the hooked _add_request_to_queue
        s.queued.append(req)
        placements.after_add_request_to_queue(None, s, req)

    s.handle_generate_request = handle_generate_request
    s.add_request_to_queue = add_request_to_queue
    placements.after_init_request_dispatcher(None, s)
    return s


def test_a_placed_request_gets_its_placement_and_is_counted_once(scheduler):
    p = placement("a")
    scheduler._request_dispatcher(placed(make_req("a"), p))
    [req] = scheduler.queued
    assert req.rid == "a" and req.dcp == p
    assert rank_stats.stats().degree_count == {1: 1} and rank_stats.stats().dp_rank == 1
    assert scheduler.dcp_pending == {}
    # Preempted or retracted, it is queued again: keeps its placement, not counted again.
    scheduler.add_request_to_queue(req)
    assert req.dcp == p and rank_stats.stats().degree_count == {1: 1}


def test_requests_dispatched_without_the_planner_get_nothing(scheduler):
    scheduler._request_dispatcher(make_req("plain"))
    [req] = scheduler.queued
    assert not hasattr(req, "dcp") and rank_stats.stats().degree_count == {}


def test_a_request_waiting_for_its_grammar_gets_its_placement_at_once(scheduler):
    scheduler.fate["g"] = "grammar"
    scheduler._request_dispatcher(placed(make_req("g"), placement("g", degree=2)))
    [req] = scheduler.grammar_manager.grammar_queue
    assert req.dcp.degree == 2 and rank_stats.stats().degree_count == {2: 1}
    scheduler.add_request_to_queue(req)  # grammar ready (scheduler.py:3838)
    assert req.dcp.degree == 2 and rank_stats.stats().degree_count == {2: 1}
    assert scheduler.dcp_pending == {}


def test_a_request_answered_without_queueing_leaves_nothing_behind(scheduler):
    scheduler.fate["bad"] = "error"
    scheduler._request_dispatcher(placed(make_req("bad"), placement("bad")))
    assert scheduler.queued == [] and scheduler.dcp_pending == {}
    assert rank_stats.stats().degree_count == {}


def test_placement_message_survives_the_wire():
    register_types()
    p = placement("w", home=0, degree=3)
    wire = io_struct.msgpack_decode(io_struct.msgpack_encode(placed(make_req("w", 5), p)))
    assert isinstance(wire, DcpPlacedBatch) and wire.rids == ["w"]
    assert list(wire.batch[0].input_ids) == list(range(5))
    assert wire.placements[0].to_placement() == p
    assert wire.placements[0].to_placement().to_json() == p.to_json()


def test_sglang_handles_the_placed_batch_as_work_in_order():
    """Under DP attention a scheduler handles work before control messages and takes control
    messages from DP rank 0 only (request_receiver.py:206 and l.200); a placement sent as its own
    (control) message would come after its request or be lost. The placed batch is work."""
    msg = placed(make_req("r"), placement("r"))
    alone = DcpPlacementMsg.of(placement("s"))
    abort = AbortReq(rid="x")
    work, control = SchedulerRequestReceiver._split_work_and_control_reqs(
        None, [alone, msg, abort, make_req("t")]
    )
    assert [type(m).__name__ for m in work] == ["DcpPlacedBatch", "TokenizedGenerateReqInput"]
    assert control == [alone, abort]
