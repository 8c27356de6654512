"""PD landing that does not complete (issue 24 item 4): no rank keeps a failed request's KV.

A request placed over several decode ranks lands through one bootstrap room with a receiver on
each rank (``pd_landing.py``): its home's, in SGLang's prealloc/transfer queues, and each
holder's, in ``RankRuntime.landing``. SGLang ends the home's receiver on every failure it
knows of (an abort, a failed or timed-out transfer, a dead prefill server: its heartbeat). A
holder's receiver is ours, so every way a landing can end must reach the holders too:

- **the DP controller is authoritative**: it sees every abort (``AbortReq``) and every end of
  a request (``DcpFinished``: finished, failed, aborted anywhere). For a landing request it
  broadcasts ``DcpLandDrop`` (``LandingBook`` keeps which rids landed); each rank then
  (``on_drop``) aborts its holder receiver if the room has not concluded (SGLang's
  ``receiver.abort()``: the prefill stops sending it), and a home whose request still waits
  for its KV in SGLang's queues aborts it through SGLang's ``abort_request``;
- **a failed holder receiver** (the drop's abort, the prefill's failure status, SGLang's
  heartbeat or waiting timeout) frees its guest slots at the next header (``release_failed``),
  after SGLang's deferred release: like the home's pages, they are held until the prefill acks
  that its writes to the room drained, or the deferred-release timeout passes;
- **a holder that cannot allocate its range** fails the request at once with the reason
  (``no_room``: an abort to the tokenizer manager, HTTP 503); the controller's drop then ends
  the home's and the other holders' receivers.

Testing only, on the prefill server: a destination list whose first position is ``DELAY_BASE -
S`` makes the send of that room wait up to ``S`` seconds (``hold_send``), or until the room
fails, so that an abort or a dead prefill server lands mid-transfer
(``SGLANG_DCP_INJECT_PD_LANDING_DELAY``, set on the decode server; the home marks its list).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np

logger = logging.getLogger(__name__)

DELAY_BASE = -1000  # first position ``DELAY_BASE - S``: hold the room's send ``S`` s (testing)


class LandingBook:
    """The DP controller's requests landing over several decode ranks, until they end. Pure."""

    def __init__(self) -> None:
        self.rids: set[str] = set()

    def landed(self, rid: str) -> None:
        self.rids.add(rid)

    def ended(self, rids: Iterable[str]) -> list[str]:
        """The landing requests among ``rids`` (finished or failed), no longer tracked."""
        out = [r for r in rids if r in self.rids]
        self.rids.difference_update(out)
        return out

    def aborted(self, rid: str, abort_all: bool) -> list[str]:
        """The landing requests an ``AbortReq`` for ``rid`` matches (SGLang matches by
        prefix), no longer tracked."""
        return self.ended([r for r in self.rids if abort_all or r.startswith(rid)])


def delay_marker(seconds: int) -> int:
    if seconds < 1:
        raise ValueError(f"a send delay of {seconds} s: give 1 s or more")
    return DELAY_BASE - seconds


def marked_delay(dst: np.ndarray) -> int:
    """Seconds the send to ``dst`` (``[num_tokens]`` int32) must wait; 0: none."""
    return int(DELAY_BASE - dst[0]) if dst.size and dst[0] <= DELAY_BASE - 1 else 0


# ---- the prefill server (testing only) -------------------------------------------------------


def hold_send(mgr, session: str, dst: np.ndarray, seconds: int) -> bool:
    """Wait up to ``seconds`` before a marked send, polling the room's status every 0.1 s.
    True: the room failed meanwhile (an abort from decode), the caller sends nothing."""
    from sglang.srt.disaggregation.base.conn import KVPoll

    room = next((r for r, infos in list(mgr.transfer_infos.items())
                 if (i := infos.get(session)) is not None and i.dst_kv_indices is not None
                 and np.shares_memory(i.dst_kv_indices, dst)), None)  # fmt: skip
    logger.warning("sglang_dcp: PD prefill: injected delay of %d s before sending room %s to %s",
                   seconds, room, session)  # fmt: skip
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # a room cleared from the books failed and was reaped
        if room is not None and mgr.request_status.get(room, KVPoll.Failed) == KVPoll.Failed:
            logger.warning("sglang_dcp: PD prefill: room %s failed during the injected delay; "
                           "nothing sent to %s", room, session)  # fmt: skip
            return True
        time.sleep(0.1)
    return False


# ---- the decode ranks ------------------------------------------------------------------------


def on_drop(rt, scheduler, msg) -> None:
    """``DcpLandDrop`` (every rank gets it): request ``msg.rid`` ended."""
    from sglang.srt.disaggregation.base.conn import KVPoll

    for room, (rid, receiver, _aux) in list(rt.landing.items()):
        if rid == msg.rid and receiver.poll() not in (KVPoll.Success, KVPoll.Failed):
            receiver.abort()  # the next header's poll frees its slots (release_failed)
            logger.info("sglang_dcp: PD landing of %s on rank %d dropped (room %d): %s",
                        rid, rt.rank, room, msg.reason)  # fmt: skip
    queued = [d for q in (scheduler.disagg_decode_prealloc_queue,
                          scheduler.disagg_decode_transfer_queue)
              for d in q.queue if d.req.rid == msg.rid]  # fmt: skip
    if queued:  # its home: still waiting for KV that will not come
        from sglang.srt.managers.io_struct import AbortReq

        scheduler.abort_request(AbortReq(rid=msg.rid, abort_message=msg.reason))


def release_failed(rt, room: int, rid: str, receiver) -> bool:
    """A holder's failed landing: True once its guest slots are free; False while the prefill
    may still write into them (SGLang's deferred release, ``decode.py`` ``_defer_release``:
    until the prefill acks that the room drained, or the deferred-release timeout)."""
    mgr = receiver.kv_mgr
    if mgr.enable_deferred_decode_kv_release:
        if room not in rt.landing_held:
            receiver.ensure_abort_notified(force_arm=True)  # a failure decode did not start
            if receiver.abort_notified:
                timeout = rt.scheduler.disagg_decode_transfer_queue.deferred_kv_release_timeout
                rt.landing_held[room] = time.monotonic() + timeout
        if room in rt.landing_held:
            acks = len(getattr(receiver, "bootstrap_infos", None) or ())
            drained = mgr.is_abort_release_safe(room, acks)
            if not drained and time.monotonic() < rt.landing_held[room]:
                return False
            del rt.landing_held[room]
            mgr.clear_deferred_abort_state(room)
    with mgr.failure_lock:
        reason = mgr.failure_records.pop(room, "see the prefill server's log")
    g = rt.drop_guest(rid)
    if g is not None:
        from sglang_dcp.sglang.shipping import free_guest

        free_guest(rt.scheduler.token_to_kv_pool_allocator, g)
    logger.warning("sglang_dcp: PD landing of %s on rank %d failed (%s); its %d guest slots are "
                   "free", rid, rt.rank, reason, 0 if g is None else g.slots.numel())  # fmt: skip
    return True


def no_room(rt, scheduler, msg, ranges: list[tuple[int, int]], n: int, why: str = "") -> None:
    """A holder cannot allocate its ``n`` slots: the request fails now with the reason (HTTP
    503 through the tokenizer manager); the controller's ``DcpLandDrop`` follows."""
    from http import HTTPStatus

    from sglang.srt.managers.io_struct import AbortReq

    why = why or (f"{scheduler.token_to_kv_pool_allocator.available_size()} free: the planner's "
                  "books and SGLang's pool disagree")  # fmt: skip
    reason = (f"sglang-dcp: decode rank {rt.rank} could not allocate the {n} KV slots of this "
              f"request's tokens {ranges} ({why}); retry it, and if this repeats lower "
              "--dcp-kv-capacity")  # fmt: skip
    logger.error("sglang_dcp: PD landing of %s failed: %s", msg.rid, reason)
    finish = {"type": "abort", "message": reason,
              "status_code": int(HTTPStatus.SERVICE_UNAVAILABLE)}  # fmt: skip
    scheduler.ipc_channels.send_to_tokenizer.send_output(
        AbortReq(rid=msg.rid, finished_reason=finish, abort_message=reason), msg
    )
