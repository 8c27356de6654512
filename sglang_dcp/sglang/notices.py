"""Tokenizer-manager side: tell the DP controller which requests ended (``DcpFinished``).

The DP controller never sees scheduler outputs; the tokenizer manager sees every finish and
abort, and its ``send_to_scheduler`` socket is the DP controller's PULL socket in DP mode
(tokenizer_manager.py:632). Hooks (hooks.py) on SGLang 0.5.21 ``TokenizerManager``:

- ``_handle_batch_output`` (l.2345, async, AROUND): every rid whose ``finished_reasons[i]`` is
  set: normal finishes, aborts of running requests, scheduler-side input errors;
- ``_handle_abort_req`` (l.3370, AFTER): aborts of requests still in a scheduler's waiting
  queue, which come back as an ``AbortReq`` instead of an output.

Notices for rids the planner does not hold (health checks, overflow, rejections) are ignored
there, so no filtering happens here.
"""

from __future__ import annotations


def finished_rids(recv_obj) -> list[str]:
    reasons = getattr(recv_obj, "finished_reasons", None) or ()
    return [rid for rid, reason in zip(recv_obj.rids or (), reasons) if reason is not None]


def _notify(tokenizer_manager, rids: list[str]) -> None:
    from sglang_dcp.sglang.messages import DcpFinished

    tokenizer_manager._dispatch_to_scheduler(DcpFinished(rids=rids))


async def around_handle_batch_output(original, self, recv_obj, *args, **kwargs):
    rids = finished_rids(recv_obj)
    try:
        return await original(self, recv_obj, *args, **kwargs)
    finally:
        if rids:
            _notify(self, rids)


def after_handle_abort_req(result, self, recv_obj, *args, **kwargs):
    if recv_obj.rid:
        _notify(self, [recv_obj.rid])
    return result
