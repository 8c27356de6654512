"""KV sharding under overlap scheduling (``overlap.py``, ``step_build.decodes_now``): which split
requests decode comes from plan-time state, and KV work waits for the forward in flight."""

from types import SimpleNamespace

import torch

from sglang_dcp.sglang import context, overlap
from sglang_dcp.sglang.step_build import decodes_now, kv_len


def req(idx, pool_row=3, committed=0, outputs=()):
    return SimpleNamespace(
        decode_batch_idx=idx, output_ids=list(outputs),
        kv=SimpleNamespace(req_pool_idx=pool_row, kv_committed_len=committed),
    )  # fmt: skip


def test_a_split_request_decodes_when_sglang_planned_it_not_when_its_output_arrived():
    # first decode with overlap on: prepare_for_decode raised the index, the first token is
    # still in flight (output_ids empty) -> it decodes now, with the KV SGLang committed
    r = req(1, committed=701, outputs=())
    assert decodes_now(r, seen=0) and kv_len(r) == 701
    # the next header on this rank runs an extend batch: the index did not move
    assert not decodes_now(r, seen=1)
    # prefilled, not decoded yet (index 0), or retracted (reset to 0, even after decoding)
    assert not decodes_now(req(0), seen=0) and not decodes_now(req(0), seen=5)
    # re-prefilled after a retraction at index 5, decoding again from 1
    assert decodes_now(req(1), seen=5)
    # no pool row (released): never
    assert not decodes_now(req(2, pool_row=None), seen=1)


def test_kv_work_waits_for_the_forward_in_flight(monkeypatch):
    old = context.use(context.RankContext())
    try:
        overlap.wait_for_forward(SimpleNamespace(device="cpu"))  # nothing in flight on CPU
        waited = []
        stream = SimpleNamespace(wait_stream=waited.append)
        fake = SimpleNamespace(current_stream=lambda: stream)
        monkeypatch.setattr(torch, "get_device_module", lambda device: fake)
        overlap.wait_for_forward(SimpleNamespace(device="cuda", forward_stream="fwd"))
        assert waited == ["fwd"]
        assert context.ctx().stats.header_forward_waits == 2
    finally:
        context.use(old)
