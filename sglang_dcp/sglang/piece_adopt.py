"""A request placed on cached pieces adopts them, rank side (issue 26, parts 3 and 4).

The controller (``piece_books.PieceBooks.admit``) placed request ``rid`` on a cached layout: its
head pieces stay where they lie, its home is the cached tail's rank. It tells every rank with a
``DcpAdopt`` control message (every rank handles it in the same scheduler iteration: rank 0
broadcasts control messages) and sends the request to its home flagged ``dcp_adopt``.

``on_adopt``, every rank, same iteration:

1. each rank says which of the pieces it still holds (a bit mask, one all-gather over the TP
   group's CPU group); the pieces adopted are the run held from token 0 (``cached`` tokens). A
   piece evicted between placement and use ends the run: the tokens from there on are prefilled
   again at the home and shipped as the placement says (prefill into shards), never read stale;
2. guests turn their pieces of the run into the request's guest KV (``GuestEntry``); pieces past
   the run are freed (the directory already let them go, so it still equals what ranks hold);
3. the home keeps an ``Adoption``: the away ranges and the ``[cached]`` slot row of its prefix
   (its own pieces' slots; away tokens point at slot 0, never read: the backend hides a split
   request's prefix and reads away ranges through the exchange).

The home holds the request until its ``DcpAdopt`` was handled (``hold``), then SGLang queues it;
``after_init_next_round_input`` gives SGLang the adopted prefix as the request's match (so
``meta_info["cached_tokens"]`` counts it, as for a tree hit) and only the rest is prefilled,
through the extend-over-shards path; ``start`` (its first chunk's header) records the away
ranges as moved and, when no head piece is left to ship, reports the layout (``ledger``). Slots: int64 tensors on the pool's device; host work O(pieces), once per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sglang_dcp.sglang.layout import KvLayout
from sglang_dcp.sglang.radix_pieces import of_runtime


@dataclass(slots=True)
class Adoption:
    cached: int  # tokens [0, cached) adopted
    away: list[tuple[int, int, int]]  # (rank, start, end) of the adopted pieces on other ranks
    prefix: torch.Tensor | None  # [cached] int64 slots of the home's row, or None (nothing)
    req: Any = None  # SGLang's Req once it asked for its match (reap: ended before its prefill)


def listen(scheduler, rt) -> None:
    from sglang.utils import TypeBasedDispatcher

    from sglang_dcp.sglang.messages import DcpAdopt

    scheduler._request_dispatcher += TypeBasedDispatcher([(DcpAdopt, lambda m: on_adopt(rt, m))])


def on_adopt(rt, msg) -> None:
    pieces = [(int(r), int(a), int(b), (str(o), int(s))) for r, a, b, o, s in msg.pieces or ()]
    pc = of_runtime(rt)
    mine = [i for i, p in enumerate(pieces) if p[0] == rt.rank]
    mask = sum(1 << i for i in mine if i < 63 and pieces[i][3] in pc)
    run = _agreed_run(rt, mask, len(pieces))
    cached = pieces[run - 1][2] if run else 0
    home = int(msg.home)
    ranges, slots, own = [], [], []
    for i in mine:
        _, a, b, owner = pieces[i]
        if i >= run:  # past the agreed run: the directory let it go, so the rank does too
            pc.drop(owner)
            continue
        s = pc.take(owner)
        if rt.rank == home:
            own.append((a, b, s))
        else:
            ranges.append((a, b))
            slots.append(s)
    if ranges:
        from sglang_dcp.sglang.entries import GuestEntry

        rt.add_guest(msg.rid, GuestEntry.new(msg.rid, home, rt.rank, ranges, torch.cat(slots)))
    if rt.rank != home:
        return
    prefix = None
    if cached:
        prefix = torch.zeros(cached, dtype=torch.int64, device=pc.allocator.device)
        for a, b, s in own:
            prefix[a:b] = s
    away = [(r, a, b) for r, a, b, _ in pieces[:run] if r != home]
    adoptions(rt)[msg.rid] = Adoption(cached, away, prefix)
    held = waiting(rt).pop(msg.rid, None)
    if held is not None:  # the request came first: SGLang takes it now
        rt.scheduler.handle_generate_request(held)


def _agreed_run(rt, mask: int, n: int) -> int:
    """Every rank's mask gathered: the number of pieces held from the first on."""
    import torch.distributed as dist

    t = torch.tensor([mask], dtype=torch.int64)
    out = [torch.zeros(1, dtype=torch.int64) for _ in range(rt.num_ranks)]
    dist.all_gather(out, t, group=rt.tp_group.cpu_group)
    held = 0
    for x in out:
        held |= int(x.item())
    run = 0
    while run < min(n, 63) and held >> run & 1:
        run += 1
    return run


def pending_tokens(rt) -> int:
    """Home slots adopted for requests that have not started prefilling (held by no request
    and no tree yet: SGLang's idle pool check counts them as in use)."""
    ads = getattr(rt, "adoptions", None)
    if not ads:
        return 0
    return sum(a.cached - sum(e - s for _, s, e in a.away) for a in ads.values() if a.cached)


def adoptions(rt) -> dict[str, Adoption]:
    if not hasattr(rt, "adoptions"):
        rt.adoptions = {}
    return rt.adoptions


def waiting(rt) -> dict:
    if not hasattr(rt, "adopt_wait"):
        rt.adopt_wait = {}
    return rt.adopt_wait


def hold(rt, recv_req) -> bool:
    """The home got a request placed on pieces before their ``DcpAdopt``: keep it until then."""
    if not getattr(recv_req, "dcp_adopt", False) or recv_req.rid in adoptions(rt):
        return False
    waiting(rt)[recv_req.rid] = recv_req
    return True


def after_init_next_round_input(result, self, tree_cache=None, *args, **kwargs):
    """``Req.init_next_round_input(tree_cache)`` (schedule_batch.py:1581): a request that
    adopted pieces matches its adopted prefix (its first prefill only)."""
    from sglang_dcp.sglang.context import runtime

    rt = runtime()
    if tree_cache is None or rt is None or not getattr(rt, "adoptions", None):
        return result
    ad = rt.adoptions.get(self.rid)
    if ad is None or ad.prefix is None or rt.split_reqs.get(self.rid) is not self:
        return result
    if self.rid in rt.home or getattr(self, "is_retracted", False):
        return result
    self.prefix_indices = ad.prefix
    ad.req = self
    return result


def start(rt, req, h) -> None:
    """The first chunk's header of ``req`` at home: its adopted away ranges are moved ranges
    (the home's row skips them when freed; the step plan finds them on their ranks)."""
    ad = getattr(rt, "adoptions", {}).pop(req.rid, None)
    if ad is None or not ad.cached:
        return
    lay = KvLayout.of(req.dcp, ad.away, offered=max(h.layout.offered, ad.cached))
    rt.set_layout(req.rid, lay)
    if lay.offered >= lay.sealed_end:  # nothing of its head left to ship: report it
        rt.ledger.layout(req.rid, rt.home)  # (meta_info["dcp"], the planner's prefill booking)


def reap(rt) -> None:
    """Every header: a request that ended before its first chunk (aborted while queued) gives
    back what it adopted: the home frees its slots, the guests release theirs at the next header
    (keeping them as pieces) and the home reports those pieces again, so the directory still
    equals what the ranks hold. O(pending adoptions), none in steady state."""
    ads = getattr(rt, "adoptions", None)
    if not ads:
        return
    for rid, ad in list(ads.items()):
        req = ad.req
        if req is None or not req.finished() or getattr(req.kv, "req_pool_idx", None) is not None:
            continue
        del ads[rid]
        if ad.prefix is not None:
            from sglang_dcp.sglang.kv_adapter import free_slots

            away = {(a, b) for _, a, b in ad.away}
            for a, b in _home_ranges(ad.cached, away):
                free_slots(rt.scheduler.token_to_kv_pool_allocator, ad.prefix[a:b], a)
        rt.drop_unstarted(req, tell_guests=bool(ad.away))
        if ad.away:
            from sglang_dcp.planner.pieces import KEY_PAGE, pieces_of
            from sglang_dcp.sglang.piece_release import _send

            ps = pieces_of(rid, ad.away, list(req.origin_input_ids), KEY_PAGE)
            _send(rt, rid=rid, cached=[[p.rank, p.start, p.end] for p in ps],
                  keys=[p.key.hex() for p in ps])  # fmt: skip


def _home_ranges(cached: int, away: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[0, cached)`` minus the away ranges."""
    out, pos = [], 0
    for a, b in sorted(away):
        if pos < a:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < cached:
        out.append((pos, cached))
    return out
