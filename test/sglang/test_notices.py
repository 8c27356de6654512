"""Tokenizer-manager hooks: every finish and abort becomes one ``DcpFinished`` to the DPC."""

from __future__ import annotations

import asyncio
import warnings
from types import SimpleNamespace

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)

from sglang.srt.managers.io_struct import AbortReq  # noqa: E402

from sglang_dcp.sglang import notices  # noqa: E402
from sglang_dcp.sglang.messages import DcpFinished  # noqa: E402


class FakeTokenizerManager:
    def __init__(self):
        self.sent = []
        self.handled = []

    def _dispatch_to_scheduler(self, obj):
        self.sent.append(obj)


async def _original(self, recv_obj):
    self.handled.append(recv_obj)
    return "ok"


def test_finished_rids_of_a_batch_output_are_sent_after_it_is_handled():
    tm = FakeTokenizerManager()
    reasons = [None, {"type": "length"}, {"type": "abort"}]
    out = SimpleNamespace(rids=["a", "b", "c"], finished_reasons=reasons)
    assert asyncio.run(notices.around_handle_batch_output(_original, tm, out)) == "ok"
    assert tm.handled == [out]
    assert [type(m) for m in tm.sent] == [DcpFinished] and tm.sent[0].rids == ["b", "c"]


def test_nothing_is_sent_while_requests_run():
    tm = FakeTokenizerManager()
    out = SimpleNamespace(rids=["a"], finished_reasons=[None])
    asyncio.run(notices.around_handle_batch_output(_original, tm, out))
    assert tm.sent == []


def test_the_notice_is_sent_even_if_handling_fails():
    tm = FakeTokenizerManager()

    async def boom(self, recv_obj):
        raise RuntimeError("x")

    out = SimpleNamespace(rids=["a"], finished_reasons=[{"type": "stop"}])
    try:
        asyncio.run(notices.around_handle_batch_output(boom, tm, out))
    except RuntimeError:
        pass
    assert tm.sent[0].rids == ["a"]


def test_aborts_from_the_waiting_queue_are_sent():
    tm = FakeTokenizerManager()
    assert notices.after_handle_abort_req(None, tm, AbortReq(rid="w")) is None
    assert tm.sent[0].rids == ["w"]
    notices.after_handle_abort_req(None, tm, AbortReq(abort_all=True))  # rid "" : nothing
    assert len(tm.sent) == 1
