"""Scheduler side of placements: the home rank's ``Req`` carries its ``types.Placement`` as
``req.dcp`` (None or absent: SGLang dispatched it without the planner).

Hooks (hooks.py) on SGLang 0.5.21 ``Scheduler`` (managers/scheduler.py):

- ``init_request_dispatcher`` (l.1718, AFTER): ``_request_dispatcher`` handles
  ``messages.DcpPlacedBatch``: remember the placements in ``scheduler.dcp_pending``, hand the
  requests to SGLang's ``handle_batch_generate_request`` (l.3118), then empty ``dcp_pending``;
- ``_add_request_to_queue(req)`` (l.3266, AFTER; where ``handle_generate_request`` ends for a
  new request, and again for preempted and retracted ones): ``req.dcp`` from ``dcp_pending``.

A request whose grammar is still compiling waits in ``grammar_manager.grammar_queue`` and
reaches the queue only later (l.3838); it gets its placement when the batch handler returns.
Requests SGLang answers with an error without queueing them drop theirs there too, so nothing
outlives one message. Each attached placement counts once in ``rank_stats`` (by degree).
"""

from __future__ import annotations

from sglang_dcp.sglang.rank_stats import stats
from sglang_dcp.types import Placement


def attach(req, placement: Placement) -> None:
    req.dcp = placement
    stats().count_degree(placement.degree)


def on_placed_batch(scheduler, msg) -> None:
    pending = scheduler.dcp_pending
    for m in msg.placements:
        pending[m.rid] = m.to_placement()
    try:
        scheduler.handle_batch_generate_request(msg)
    finally:
        left = {m.rid: pending.pop(m.rid) for m in msg.placements if m.rid in pending}
        if left:
            for req in scheduler.grammar_manager.grammar_queue:
                if req.rid in left:
                    attach(req, left.pop(req.rid))


def after_init_request_dispatcher(result, self, *args, **kwargs):
    from sglang.srt.runtime_context import get_parallel
    from sglang.utils import TypeBasedDispatcher

    from sglang_dcp.sglang.messages import DcpPlacedBatch

    self.dcp_pending = {}
    stats().dp_rank = get_parallel().dp_rank or 0
    self._request_dispatcher += TypeBasedDispatcher(
        [(DcpPlacedBatch, lambda msg: on_placed_batch(self, msg))]
    )
    return result


def after_add_request_to_queue(result, self, req, *args, **kwargs):
    pending = getattr(self, "dcp_pending", None)
    placement = pending.pop(req.rid, None) if pending else None
    if placement is not None:
        attach(req, placement)
    return result
