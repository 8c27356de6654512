"""Prefill into shards, scheduler side (issue 18): a split request's prompt leaves its home chunk
by chunk, so the home never holds much more than its own part plus one chunk.

With SGLang's chunked prefill (``--chunked-prefill-size``) the home runs a split request's prompt
as several EXTEND forwards. Per chunk ``[start, end)`` (``req.extend_range``):

1. the step header (``datapath.RankRuntime.news``) announces it as ``step.Extending``: where
   ``[0, start)`` is now (earlier chunks' pieces on their ranks) and the chunk at home, plus the
   pieces of ``[offered, end)`` that the placement gives other ranks (``RankNews.after``);
2. if part of ``[0, start)`` is away, every rank joins each layer's exchange with one query item
   per chunk row (``exchange.extend``; the backend replaces those rows' output, ``backend.py``);
3. right after the forward (``after_run_batch``, every rank, the same list) the pieces ship
   through ``shipping.ship`` (``transfer_shards``: allocate, copy, checksum, the home frees).

A failed piece fails the request while it is still prefilling (SGLang's own chunked-abort path,
with the reason, ``around_pending_chunked_abort``); after its last chunk it stays at home, as a
failed decode-time move does. An abort mid-prefill releases the request through SGLang as usual:
the home frees what it holds, the next header tells the shard ranks to free the shipped pieces.

Pieces end on page boundaries (the home frees whole pages), except at a shard's end.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang.step import Extending, RankNews
from sglang_dcp.types import Placement

logger = logging.getLogger(__name__)


def away_pieces(p: Placement, start: int, end: int) -> list[tuple[int, int, int]]:
    """(rank, start, end) of ``p``'s sealed shards on other ranks, clipped to ``[start, end)``."""
    out = []
    for s in p.shards[:-1]:
        a, b = max(s.start, start), min(s.end, end)
        if s.rank != p.home_rank and a < b:
            out.append((s.rank, a, b))
    return out


def away_tokens(p: Placement) -> int:
    """Tokens of ``p`` that live on other ranks once shipped."""
    return sum(b - a for _, a, b in away_pieces(p, 0, p.shards[-1].start))


def extend_news(rt, local_batch, news: RankNews, page: int) -> None:
    """Add this rank's split requests in the EXTEND batch ``local_batch`` to ``news``: each
    chunk (``Extending``) and the pieces that leave after the forward (O(batch), extend only)."""
    from sglang_dcp.sglang.entries import HomeEntry
    from sglang_dcp.sglang.piece_adopt import start as adopt_start

    for req in local_batch.reqs:
        if rt.split_reqs.get(req.rid) is not req or req.extend_range is None:
            continue
        h = rt.home.get(req.rid)
        if h is None or h.req is not req:
            h = rt.home[req.rid] = HomeEntry(req)
            adopt_start(rt, req, h)  # placed on cached pieces: those away are moved ranges
        p = req.dcp
        start, end = req.extend_range.start, req.extend_range.end
        news.extending.append(Extending(req.rid, rt.rank, h.layout.upto(end), start, end))
        sealed_end = p.shards[-1].start
        upto = min(end, sealed_end)
        if upto < sealed_end:
            upto -= upto % page  # whole pages only; the rest goes with the next chunk
        news.after += [Migration(req.rid, rt.rank, r, a, b)
                       for r, a, b in away_pieces(p, h.layout.offered, upto)]  # fmt: skip


def after_forward(rt) -> None:
    """Every rank, after each forward: ship the pieces the header announced (``rt.after``)."""
    moves, rt.after = rt.after, ()
    if not moves:
        return
    from sglang_dcp.sglang import overlap, shipping

    for m in moves:  # tried from now on (the ledger reports a request once all were tried)
        h = rt.home.get(m.rid) if m.src == rt.rank else None
        if h is not None:
            h.layout = h.layout.with_offered(m.end)
    overlap.wait_for_forward(rt.model_runner)  # the chunk's KV is written by then
    homes = {m.rid: m.src for m in moves}  # prefill pieces leave their home
    failed = shipping.ship(rt, list(moves), rt.model_runner, homes)
    sched = rt.scheduler
    for m in failed:
        h = rt.home.get(m.rid) if m.src == rt.rank else None
        if h is None:
            continue
        h.layout = h.layout.with_failed(m.dst, m.start, m.end)
        if getattr(sched, "chunked_req", None) is h.req and m.rid not in rt.prefill_failed:
            rt.prefill_failed[m.rid] = (
                f"sglang_dcp: moving prefill tokens [{m.start}, {m.end}) of {m.rid} from rank "
                f"{m.src} to rank {m.dst} failed, so the rest of its prompt has no room at its "
                "home; retry the request (see the server log for the transfer error)"
            )
            sched._pending_chunked_abort_req = h.req  # aborted at the next scheduling step


def around_pending_chunked_abort(original, self, *args, **kwargs):
    """``Scheduler.process_pending_chunked_abort()`` (scheduler.py:3537): a request whose prefill
    piece failed to move ends as SGLang ends an aborted chunked request, with our reason."""
    from sglang_dcp.sglang.context import ctx

    rt = ctx().runtime
    req = self._pending_chunked_abort_req
    reason = rt.prefill_failed.pop(req.rid, None) if rt is not None and req is not None else None
    if reason is None or self.chunked_req is not req:
        return original(self, *args, **kwargs)
    from sglang.srt.disaggregation.utils import prepare_abort
    from sglang.srt.managers.io_struct import AbortReq
    from sglang.srt.mem_cache import common

    logger.warning("%s", reason)
    prepare_abort(req, reason, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
    req.to_finish = None
    self._release_aborted_request(req)
    common.release_kv_cache(req, self.tree_cache, is_insert=False)
    self.chunked_req = None
    self._pending_chunked_abort_req = None
    abort = AbortReq(rid=req.rid, finished_reason=req.finished_reason.to_json(),
                     abort_message=reason)  # fmt: skip
    self.ipc_channels.send_to_tokenizer.send_output(abort, req)
