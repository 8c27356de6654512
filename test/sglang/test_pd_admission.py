"""PD decode admission of a prompt larger than one decode rank's pool (``pd_admission.py``),
around SGLang 0.5.21's own ``DecodePreallocQueue`` checks, with no server: a request the planner
lands over several ranks is checked on its home's share; a whole request as SGLang checks it
(the end-to-end run is ``test/e2e/test_pd.py``)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from sglang.srt.disaggregation.decode import DecodePreallocQueue

from sglang_dcp.sglang import context, pd_admission
from sglang_dcp.types import Placement, Shard

POOL = 1024
# 2248 tokens: [0, 1024) on rank 1, [1024, 2048) on rank 2, the tail (200 and new) at home
SPLIT = Placement("long", 0, (Shard(1, 0, 1024), Shard(2, 1024, 2048), Shard(0, 2048, 2256)))
WHOLE = Placement("short", 0, (Shard(0, 0, 40),))
RESERVE = 512  # SGLang's --num-reserved-decode-tokens default


def _req(rid: str, n: int, placement=None):
    return SimpleNamespace(rid=rid, origin_input_ids=[1] * n, output_ids=[],
                           sampling_params=SimpleNamespace(max_new_tokens=8),
                           dcp=placement, return_logprob=False)  # fmt: skip


def _queue():
    """SGLang's prealloc queue with only what the two checks read (a page-1 full-attention pool
    of ``POOL`` tokens, no radix cache on the decode side)."""
    q = object.__new__(DecodePreallocQueue)
    q.max_total_num_tokens, q.num_reserved_decode_tokens = POOL, RESERVE
    q.token_to_kv_pool = object()  # not an SWA pool
    q.token_to_kv_pool_allocator = SimpleNamespace(
        page_size=1, prealloc_ceiling_fits=lambda *a: None  # no ceiling of its own (base.py:105)
    )
    q.aborted = []
    q.scheduler = SimpleNamespace(enable_hisparse=False, output_streamer=SimpleNamespace(
        stream_output=lambda reqs, _: q.aborted.extend(r.rid for r in reqs)))  # fmt: skip
    return q



def _sglang(name: str):
    """SGLang's own method (unwrapped: an earlier test in this process may have installed the
    plugin's hooks on the class)."""
    return inspect.unwrap(getattr(DecodePreallocQueue, name))


@pytest.fixture
def incoming(monkeypatch):
    """The rank runtime's placements of requests SGLang is building (before ``req.dcp``)."""
    monkeypatch.setattr(context, "_CTX", context.RankContext())
    rt = SimpleNamespace(incoming={})
    context.ctx().set_runtime(rt)
    return rt.incoming


def _exceeds(q, req) -> bool:
    return pd_admission.around_check_if_req_exceed_kv_capacity(
        _sglang("_check_if_req_exceed_kv_capacity"), q, req
    )


def test_a_prompt_larger_than_the_pool_passes_on_its_homes_share(incoming, monkeypatch):
    monkeypatch.setattr("sglang.srt.disaggregation.decode.prepare_abort",
                        lambda req, msg, status_code: setattr(req, "abort", msg))  # fmt: skip
    monkeypatch.setattr("sglang.srt.disaggregation.decode.get_memory",
                        lambda: SimpleNamespace(disable_radix_cache=True))  # as test_pd's server
    q = _queue()
    incoming["long"] = SPLIT  # add() runs before req.dcp is set
    assert not _exceeds(q, _req("long", 2248))
    assert q.max_total_num_tokens == POOL  # restored
    assert not _exceeds(q, _req("long", 2248, SPLIT))  # and once it is set
    alone = _req("alone", 2248)  # placed whole (or not by the planner): SGLang's answer
    assert _exceeds(q, alone) and "exceeds the maximum number of tokens" in alone.abort
    assert q.aborted == ["alone"]


def test_the_admission_need_counts_only_the_homes_share(incoming):
    q = _queue()

    def need(req, retractable=0):
        return pd_admission.around_required_admission_tokens(
            _sglang("_required_admission_tokens"), q, req, len(req.origin_input_ids),
            0, retractable)  # fmt: skip

    # SGLang: max(allocated + reserve, prompt + max_new - retractable)
    assert need(_req("short", 40, WHOLE)) == 40 + RESERVE
    # 2048 tokens land on ranks 1, 2; the planner booked the 8 new tokens on the home's tail
    assert need(_req("long", 2248, SPLIT)) == 200 + 8
    incoming["queued"] = SPLIT
    assert need(_req("queued", 2248)) == 200 + 8
    assert q.num_reserved_decode_tokens == RESERVE  # restored
