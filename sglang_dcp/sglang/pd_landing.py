"""PD-disaggregated decode: a split request's KV lands straight in its shards (issue 24).

The decode server's DP controller places the request (home + holders, ``dpc.py``) and, besides
sending the request to its home, broadcasts a ``DcpLand`` control message. Then, for bootstrap
room R of a prompt of ``n`` tokens (positions below are pages of ``--page-size`` tokens, as in
SGLang's transfer lists; the planner's ranges are whole pages, ``dpc.planner_page``):

- **each holder** (a rank with a sealed shard of it, not the home; ``on_land``) allocates slots
  for its ranges only, records them as a ``GuestEntry`` (the state a finished shard move leaves),
  and registers for room R with its own destination list: one entry per page, its pages at its
  ranges and ``-1`` elsewhere (``destinations``), plus a metadata slot for the aux data;
- **the home** (SGLang's own prealloc path, two hooks) allocates slots only for the tokens it
  keeps (the tail), marks the other positions ``-1`` in the list it sends, and starts with the
  state of a finished move: ``HomeEntry`` whose layout has the holders' ranges moved (SGLang's
  release skips them: ``KvLayout.skip_rows``), ``shipped=True``;
- every receiver of room R announces ``required_dst_info_num = d`` (the ranks of the placement),
  so the prefill server waits for all ``d`` and sends each only its positions
  (``around_send_kvcache``, the one part that runs on the prefill server), concluding the room
  only after every destination got its KV and aux data.

Decoding then runs the colocated data path unchanged (the header's ``Decoding`` shards, the
exchange over the guests); nothing is shipped after landing. When the home releases the
request, the next header tells the holders to free their guest slots, as after a shard move.
A holder's receiver is polled each header until the room concludes, then its metadata slot is
freed; a failed room fails the request at its home (SGLang's path) and each holder frees its
slots when its receiver reports the failure (the home's release then finds nothing to free).
Aborts, a holder without room and a dead prefill server: ``pd_cleanup.py``.
"""

from __future__ import annotations

import logging

import numpy as np

from sglang_dcp import env
from sglang_dcp.sglang import pd_cleanup
from sglang_dcp.types import Placement

logger = logging.getLogger(__name__)

FAIL_ME = -2  # a destination position whose transfer must fail (the fault switch, testing only)


def destinations(n: int, ranges: list[tuple[int, int]], slots, page: int = 1) -> np.ndarray:
    """The list a destination sends for a prompt of ``n`` tokens, in SGLang's transfer form
    (``_transfer_page_indices``: one entry per page of ``page`` tokens, a page index): ``slots``
    (host ints, concatenated in ``ranges`` order, whole pages) at the pages of ``ranges``
    (page-aligned starts), ``-1`` (not this destination's) elsewhere. ``[ceil(n / page)]``
    int32; at page size 1 the slots at the token positions."""
    out = np.full(-(-n // page), -1, dtype=np.int32)
    slots, pos = np.asarray(slots), 0
    for a, b in ranges:
        if a % page:
            raise ValueError(f"range {(a, b)} does not start a page of {page} tokens")
        pages = slots[pos : pos + b - a : page] // page
        out[a // page : a // page + len(pages)] = pages
        pos += -(-(b - a) // page) * page
    return out


def page_aligned(ranges: list[tuple[int, int]], page: int) -> bool:
    return all(a % page == 0 and b % page == 0 for a, b in ranges)


def ranges_of(p: Placement, rank: int) -> list[tuple[int, int]]:
    """Token ranges of ``p`` that land on ``rank``, in token order (the tail goes home)."""
    return [(s.start, s.end) for s in p.shards if s.rank == rank and s.end > s.start]


def num_destinations(p: Placement) -> int:
    return len({s.rank for s in p.shards if s.end > s.start} | {p.home_rank})


def is_landing(req) -> bool:
    p = getattr(req, "dcp", None)
    return p is not None and p.degree > 1


# ---- the holder ------------------------------------------------------------------------------


def on_land(rt, scheduler, msg) -> None:
    """``DcpLand`` (every rank gets it): a holder allocates and registers its ranges."""
    p = msg.placement()
    if rt.rank == p.home_rank:
        return
    mine = ranges_of(p, rt.rank)
    if not mine:
        return
    from sglang.srt.disaggregation.base.conn import KVPoll
    from sglang.srt.disaggregation.utils import KVClassType, get_kv_class

    from sglang_dcp.sglang.entries import GuestEntry

    n = sum(b - a for a, b in mine)
    page = scheduler.token_to_kv_pool_allocator.page_size
    if env.inject_pd_landing_no_room() == msg.prompt_len:  # testing only
        why = f"injected: {env.INJECT_PD_LANDING_NO_ROOM_VAR}"
        pd_cleanup.no_room(rt, scheduler, msg, mine, n, why=why)
        return
    if not page_aligned(mine, page):  # the planner's page is a multiple of SGLang's (dpc.py)
        why = f"ranges {mine} are not whole pages of {page} tokens"
        pd_cleanup.no_room(rt, scheduler, msg, mine, n, why=why)
        return
    slots = scheduler.token_to_kv_pool_allocator.alloc(n)  # whole pages at --page-size > 1
    if slots is None:  # the planner booked it: SGLang's pool disagrees with its books
        pd_cleanup.no_room(rt, scheduler, msg, mine, n)
        return
    rt.add_guest(p.rid, GuestEntry.new(p.rid, p.home_rank, rt.rank, mine, slots))
    q = scheduler.disagg_decode_prealloc_queue
    addr = f"{msg.bootstrap_host}:{msg.bootstrap_port}"
    q.kv_manager.try_ensure_parallel_info(addr)
    receiver = get_kv_class(q.transfer_backend, KVClassType.RECEIVER)(
        mgr=q.kv_manager, bootstrap_addr=addr, bootstrap_room=msg.bootstrap_room
    )
    receiver.init(0)
    aux = q.req_to_metadata_buffer_idx_allocator.alloc()
    if receiver.poll() != KVPoll.Failed:
        receiver.required_dst_info_num = num_destinations(p)
        dst = destinations(msg.prompt_len, mine, slots.numpy(force=True), page)  # per landing
        if env.inject_pd_landing_failure() == msg.prompt_len and p.shards[0].rank == rt.rank:
            dst[dst >= 0] = FAIL_ME  # the prefill's send to this holder fails (testing only)
        receiver.send_metadata(dst, aux, None, decode_prefix_len=0)
    rt.landing[msg.bootstrap_room] = (p.rid, receiver, aux)
    logger.info("sglang_dcp: PD landing: %s tokens %s on rank %d (home %d, room %d)",
                p.rid, mine, rt.rank, p.home_rank, msg.bootstrap_room)  # fmt: skip


def poll(rt) -> None:
    """Each header, holders only: drop the receivers whose room concluded (O(landing))."""
    from sglang.srt.disaggregation.base.conn import KVPoll

    q = rt.scheduler.disagg_decode_prealloc_queue
    for room, (rid, receiver, aux) in list(rt.landing.items()):
        state = receiver.poll()
        if state not in (KVPoll.Success, KVPoll.Failed):
            continue
        if state == KVPoll.Failed and not pd_cleanup.release_failed(rt, room, rid, receiver):
            continue  # the prefill may still write into its slots (the home's release skips it)
        del rt.landing[room]
        q.metadata_buffers.bootstrap_room[aux] = 0  # as SGLang before the next owner polls
        q.req_to_metadata_buffer_idx_allocator.free(aux)
        receiver.clear()


# ---- the home (hooks on SGLang's DecodePreallocQueue) ----------------------------------------


def around_alloc_for_decode_prealloc(original, self, allocator, **kwargs):
    """``DecodePreallocQueue._alloc_for_decode_prealloc`` (disaggregation/decode.py:2049): for a
    split request, slots only for the positions its home keeps; the others get slot 0 (never
    read: the home's layout skips them and the destination list marks them ``-1``)."""
    req = kwargs["req"]
    if not is_landing(req):
        return original(self, allocator, **kwargs)
    import torch

    from sglang_dcp.sglang.context import ctx
    from sglang_dcp.sglang.layout import KvLayout

    fill_len, prefix_len, page = kwargs["fill_len"], kwargs["prefix_len"], allocator.page_size
    rt, p = ctx().runtime, req.dcp
    keep = [(a, min(b, fill_len)) for a, b in ranges_of(p, p.home_rank) if a < fill_len]
    keep[-1] = (keep[-1][0], fill_len)  # the tail runs to the end of what is preallocated
    if prefix_len or kwargs.get("uses_swa_tail") or any(a % page for a, _ in keep):
        raise RuntimeError(
            f"sglang_dcp: PD landing in shards needs no decode prefix cache, no SWA tail and "
            f"page-aligned ranges (got prefix {prefix_len}, ranges {keep} at page size {page} "
            f"for {req.rid}); pass --dcp-max-degree 1 to place PD requests whole"
        )
    # whole pages: each range starts a page (the last one's last page is partly filled)
    own = allocator.alloc(sum(-(-(b - a) // page) * page for a, b in keep))
    if own is None:
        return None
    req.kv.kv_allocated_len = fill_len
    kv_loc = torch.zeros(fill_len, dtype=own.dtype, device=own.device)
    pos = 0
    for a, b in keep:
        kv_loc[a:b] = own[pos : pos + b - a]
        pos += -(-(b - a) // page) * page
    away = [(s.rank, s.start, s.end) for s in p.shards if s.rank != p.home_rank]
    rt.land(req, KvLayout.of(p, away, offered=p.shards[-1].start))  # its row skips them
    rt.ledger.layout(req.rid, rt.home)  # the planner's books and meta_info: where it lands
    return kv_loc


def around_transfer_page_indices(original, self, decode_req, kv_indices, page_size):
    """``DecodePreallocQueue._transfer_page_indices`` (decode.py:2054), right before the home
    sends its metadata: the holders' positions become ``-1``, and the room needs every rank
    of the placement."""
    out = original(self, decode_req, kv_indices, page_size)  # one entry per page
    req = decode_req.req
    if is_landing(req):
        p = req.dcp
        for s in p.shards:
            if s.rank != p.home_rank:  # page-aligned (the planner's page, dpc.py)
                out[s.start // page_size : -(-s.end // page_size)] = -1
        decode_req.kv_receiver.required_dst_info_num = num_destinations(p)
        delay = env.inject_pd_landing_delay()
        if delay is not None and delay[0] == len(req.origin_input_ids):  # testing only
            out[0] = pd_cleanup.delay_marker(delay[1])  # position 0 is a holder's, never sent
    return out


# ---- the prefill server ----------------------------------------------------------------------


def around_send_kvcache(original, self, mooncake_session_id, prefill_kv_indices, dst_kv_ptrs,
                        dst_kv_indices, executor, *args, **kwargs):  # fmt: skip
    """``MooncakeKVManager.send_kvcache`` (disaggregation/mooncake/conn.py:1051), on the prefill
    server: send a destination only the positions it asked for (``-1``: another rank's); at
    ``--page-size > 1`` both lists are page indices, so it sends whole pages."""
    if (dst_kv_indices == FAIL_ME).any():  # the fault switch (env.inject_pd_landing_failure)
        logger.warning("sglang_dcp: PD prefill: injected transfer failure to %s",
                       mooncake_session_id)  # fmt: skip
        return 1
    delay = pd_cleanup.marked_delay(dst_kv_indices)  # SGLANG_DCP_INJECT_PD_LANDING_DELAY
    if delay and pd_cleanup.hold_send(self, mooncake_session_id, dst_kv_indices, delay):
        return 0  # the room failed meanwhile: nothing written to this destination
    keep = dst_kv_indices >= 0
    if not keep.all():
        logger.info("sglang_dcp: PD prefill sends %s %d of %d positions (its range)",
                    mooncake_session_id, int(keep.sum()), keep.size)  # fmt: skip
        prefill_kv_indices, dst_kv_indices = prefill_kv_indices[keep], dst_kv_indices[keep]
        if prefill_kv_indices.size == 0:
            return 0
    return original(self, mooncake_session_id, prefill_kv_indices, dst_kv_ptrs,
                    dst_kv_indices, executor, *args, **kwargs)  # fmt: skip
