"""The ledger: the planner's books follow what the ranks hold.

A placement is the planner's plan; the home carries it out at the request's first decode step
(it ships the sealed shards, ``datapath.py``) and a move can fail, leaving that range on the
home. Two ends, one loop:

- **rank end** (``RankLedger``, one per scheduler): after a header's transfers the home records
  where each of its just-shipped requests' sealed ranges really are (``req.dcp_layout``, read by
  ``current_placement`` for ``meta_info["dcp"]``) and sends them to the DP controller
  (``DcpShardReport``, on a PUSH socket to the controller's ledger inbox). It learns the inbox
  from the controller's ``DcpPlannerView`` broadcast, which also carries the planner's per-rank
  numbers for ``/v1/loads`` (``rank_stats``); reports made before that wait.
- **controller end** (``PlannerBooks``, in the DP controller, SGLang-free): each report goes to
  ``Policy.restate`` (planner/reported.py); a changed book may let waiting requests in
  (``DcpDispatcher.drain``). The per-rank view (reserved KV, guest KV) goes out at most every
  ``interval_s``, only when it changed. The sockets are in ``dpc.py``.

Once in-flight moves and messages drain, the planner's guest KV per rank equals what the ranks
hold for other ranks' requests (``guest_kv_tokens`` next to ``planner_guest_kv_tokens``), and
on an idle server both the planner's and the allocators' KV are zero.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sglang_dcp.sglang.context import stats
from sglang_dcp.sglang.layout import KvLayout
from sglang_dcp.types import Placement, Shard

logger = logging.getLogger(__name__)


# ---- the request's ranges, as they are --------------------------------------------------------


def kv_len(req) -> int:
    """KV tokens a request holds after its latest output: the prompt and every output token
    but the newest (its KV is written by the next decode step)."""
    return len(req.origin_input_ids) + max(len(req.output_ids) - 1, 0)


def current_placement(req) -> Placement | None:
    """``req``'s ranges as they are now (``meta_info["dcp"]``): shipped shards where they went,
    the rest on the home, the home's tail up to the KV it holds. ``None``: not placed."""
    p = getattr(req, "dcp", None)
    if p is None:
        return None
    lay = getattr(req, "dcp_layout", None) or KvLayout.of(p)
    shards = lay.shards(max(kv_len(req), lay.sealed_end))
    return Placement(p.rid, p.home_rank, tuple(Shard(*s) for s in shards))


# ---- rank end ---------------------------------------------------------------------------------


class RankLedger:
    """What one scheduler (DP rank ``rank``) tells the planner; ``send(inbox, message)`` is the
    socket (``None``: the real PUSH socket)."""

    def __init__(self, rank: int, send: Callable[[str, Any], None] | None = None) -> None:
        self.rank = rank
        self.inbox: str | None = None  # the controller's ledger inbox, from its first view
        self.pending: list[Any] = []  # reports made before the inbox was known
        self._send = send or _push
        self.num_reports = 0

    def shipped(self, results: Sequence[Any], home: Mapping[str, Any]) -> None:
        """After a header's ``transfer_shards(...)`` (``results``, the same list everywhere):
        report the requests homed here whose shards moved or failed to, from the home or
        between other ranks (``home``: rid -> ``HomeEntry``)."""
        mine = [r for r in results if r.move.rid in home]
        done = sum(1 for r in mine if r.ok)
        self._report(list(dict.fromkeys(r.move.rid for r in mine)), home, done, len(mine) - done)

    def layout(self, rid: str, home: Mapping[str, Any]) -> None:
        """Report ``rid``'s ranges as they are (a migration the controller booked was dropped)."""
        self._report([rid], home, 0, 0)

    def _report(self, rids_in: list[str], home: Mapping[str, Any], done: int, failed: int) -> None:
        from sglang_dcp.sglang.messages import DcpShardReport

        rids, sealed = [], []
        for rid in rids_in:
            h = home.get(rid)
            if h is None or getattr(h.req, "dcp", None) is None:
                continue
            if h.layout.offered < h.layout.sealed_end:
                continue  # mid-prefill into shards: reported once every piece was tried
            h.req.dcp_layout = h.layout  # immutable: the snapshot meta_info reads
            rids.append(rid)
            sealed.append(h.layout.sealed())
        if not rids:
            return
        report = DcpShardReport(
            dcp_rank=self.rank, rids=rids, sealed=sealed, moves_done=done, moves_failed=failed,
        )  # fmt: skip
        self.num_reports += 1
        if self.inbox is None:
            self.pending.append(report)
        else:
            self._send(self.inbox, report)

    def released(self, req) -> None:
        """The home gave ``req``'s KV back. A retracted request (not finished) holds nothing
        until it prefills and ships again; a finished one keeps its ranges for its last output."""
        if not req.finished():
            req.dcp_layout = None

    def on_view(self, msg) -> None:
        """``DcpPlannerView`` from the controller (a control message every rank receives)."""
        s = stats()
        if msg.kv_tokens:
            s.planner_kv_tokens = msg.kv_tokens[self.rank]
        if msg.guest_kv_tokens:
            s.planner_guest_kv_tokens = msg.guest_kv_tokens[self.rank]
        if msg.piece_kv_tokens:
            s.planner_piece_kv_tokens = msg.piece_kv_tokens[self.rank]
        if msg.inbox and self.inbox is None:
            self.inbox = msg.inbox
            for report in self.pending:
                self._send(self.inbox, report)
            self.pending = []


_SOCKETS: dict[str, Any] = {}


def _push(inbox: str, message: Any) -> None:
    import zmq
    from sglang.srt.managers.io_struct import sock_send
    from sglang.srt.utils.network import get_zmq_socket

    if inbox not in _SOCKETS:
        _SOCKETS[inbox] = get_zmq_socket(zmq.Context.instance(), zmq.PUSH, inbox, False)
    sock_send(_SOCKETS[inbox], message)


def listen(scheduler, ledger: RankLedger) -> None:
    """Hand the controller's ``DcpPlannerView`` to ``ledger`` (scheduler's request dispatcher)."""
    from sglang.utils import TypeBasedDispatcher

    from sglang_dcp.sglang.messages import DcpPlannerView

    scheduler._request_dispatcher += TypeBasedDispatcher([(DcpPlannerView, ledger.on_view)])


# ---- controller end ---------------------------------------------------------------------------


class PlannerBooks:
    """The DP controller's end: ``dispatcher`` (a ``DcpDispatcher``) holds the policy;
    ``publish(kv_tokens, guest_kv_tokens)`` sends the per-rank view to every scheduler."""

    def __init__(
        self,
        dispatcher,
        publish: Callable[[list[int], list[int]], None],
        *,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatcher = dispatcher
        self._publish = publish
        self.interval_s = interval_s
        self._clock = clock
        self._last_t = float("-inf")
        self._last_view: tuple | None = None
        self.moves_done = 0
        self.moves_failed = 0
        self.num_restated = 0

    def on_report(self, report) -> None:
        """A home's ``DcpShardReport``: its requests' sealed ranges as the ranks hold them."""
        d, policy = self.dispatcher, self.dispatcher.policy
        self.moves_done += report.moves_done
        self.moves_failed += report.moves_failed
        changed = False
        for rid, sealed in zip(report.rids or (), report.sealed or ()):
            try:
                if policy.restate(rid, sealed):
                    changed = True
                    self.num_restated += 1
                    d._log("sglang_dcp: planner ledger rid=%s sealed=%s %s", rid, sealed, d.state())
            except ValueError as e:  # a rank and the planner disagree on the layout: keep going
                logger.warning("sglang_dcp: ledger report from rank %s ignored: %s",
                               report.dcp_rank, e)  # fmt: skip
            # a home reports a request once its prefill's pieces were all tried: its prefill
            # transient (planner/prefill.py) is over
            done = getattr(policy, "prefill_done", None)
            if done is not None and done(rid):
                changed = True
        if changed and d.queue:
            d.drain()
        self.tick(force=changed)

    def view(self) -> tuple[list[int], list[int]]:
        policy = self.dispatcher.policy
        return policy.kv_tokens(), policy.guest_kv_tokens()

    def tick(self, force: bool = False) -> None:
        """Publish the view if it changed, at most every ``interval_s`` (``force``: now)."""
        now = self._clock()
        if not force and now - self._last_t < self.interval_s:
            return
        self._last_t = now
        view = self.view()
        if view != self._last_view:
            self._last_view = view
            self._publish(*view)
