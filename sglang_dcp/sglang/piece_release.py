"""Finished split requests leave their pieces cached, rank side (issue 26, part 2).

When a split request's home releases it, every rank holding a range of its KV keeps that range as
a piece (``piece_cache.PieceCache``, owner ``(rid, start)``) instead of freeing it:

- a **guest** (``keep_guest``, at the header that carries the release): each of its ranges;
- the **home** (``keep_home``, inside ``release_kv_cache``): its own ranges of a request that
  finished (not aborted, not retracted: only then is every slot of them written), each cut to
  whole pages (as SGLang's tree keys page-aligned prefixes: the page past the cut is freed with
  the rest of the row).

The home then tells the controller (``report``, a ``DcpPieces`` on the ledger socket) each range
and the key of its token prefix (``planner.pieces``: only the home has the tokens); every rank
tells it which pieces its cache freed (``flush_evictions``, at most once per header), so the
controller's ``PieceDirectory`` follows what the ranks hold. A rank without a radix tree
(``--disable-radix-cache``) frees as before: its pieces would never be evicted by SGLang.
"""

from __future__ import annotations

import torch

from sglang_dcp.planner.pieces import KEY_PAGE, pieces_of
from sglang_dcp.sglang.ledger import kv_len
from sglang_dcp.sglang.radix_pieces import of_runtime
from sglang_dcp.sglang.tree_prefix import clip, protected


def enabled(rt) -> bool:
    """Pieces are kept with a radix tree, outside a PD decode server (its KV comes from the
    prefill server, whose own radix cache reuses context; ``dpc`` keeps no piece books there)."""
    tree = getattr(rt.scheduler, "tree_cache", None)
    if tree is None or tree.is_chunk_cache():
        return False
    mode = getattr(getattr(rt.scheduler, "server_args", None), "disaggregation_mode", "null")
    return mode != "decode"


def keep_guest(rt, rid: str, g) -> bool:
    """A released request's guest ranges here become pieces; ``False``: not kept (free them)."""
    if not enabled(rt):
        return False
    pc = of_runtime(rt)
    for (a, _), part in g.parts():
        pc.put((rid, a), part)
    return True


def home_ranges(rt, req) -> list[tuple[int, int]]:
    """The home's own ranges of a finished split ``req`` worth keeping: whole pages of the KV
    it wrote (prompt and every output token but the newest)."""
    h = rt.home.get(req.rid)
    if h is None or h.req is not req or not enabled(rt) or not _finished_normally(req):
        return []
    n = kv_len(req)
    if n < req.dcp.shards[-1].start:  # it ended before its tail: the home keeps no range
        return []
    out = []
    for r, a, b in h.layout.shards(n):
        b = b if rt.page == 1 else b - b % rt.page
        if r == rt.rank and a < b:
            out.append((a, b))
    return clip(out, protected(req))  # the tree's slots stay the tree's (tree_prefix.py)


def keep_home(rt, req, ranges: list[tuple[int, int]]) -> None:
    """The home's ``ranges`` of ``req`` become pieces (their slots copied out of the row, a
    device op); the caller skips them when it frees the row."""
    row = rt.scheduler.req_to_token_pool.req_to_token[req.kv.req_pool_idx]
    pc = of_runtime(rt)
    for a, b in ranges:
        pc.put((req.rid, a), row[a:b].to(torch.int64, copy=True))


def report(rt, req, kept_home: list[tuple[int, int]]) -> None:
    """Tell the controller which pieces ``req`` left and their keys: the ranges its moves put on
    other ranks (as the guests hold them) and ``kept_home``. O(KV tokens), once per request."""
    h = rt.home.get(req.rid)
    if h is None or not enabled(rt):
        return
    ranges = list(h.layout.away())
    ranges += [(rt.rank, a, b) for a, b in kept_home]
    if not ranges:
        return
    end = max(b for _, _, b in ranges)
    tokens = (list(req.origin_input_ids) + list(req.output_ids))[:end]
    if len(tokens) < end:  # pragma: no cover - moved ranges never pass the KV written
        return
    pieces = pieces_of(req.rid, ranges, tokens, KEY_PAGE)
    _send(rt, cached=[[p.rank, p.start, p.end] for p in pieces], keys=[p.key.hex() for p in pieces],
          rid=req.rid)  # fmt: skip


def flush_evictions(rt) -> None:
    """Every rank, once per header: report the pieces its cache freed since the last one."""
    pc = getattr(rt, "piece_cache", None)
    if pc is None:
        return
    from sglang_dcp.sglang.context import stats

    stats().piece_kv_tokens = pc.tokens
    if pc.evicted:
        gone = pc.drain_evicted()
        stats().pieces_evicted += len(gone)
        _send(rt, evicted=[[rid, a] for rid, a in gone])


def _finished_normally(req) -> bool:
    reason = getattr(req, "finished_reason", None)
    return reason is not None and type(reason).__name__ != "FINISH_ABORT" and req.finished()


def _send(rt, **fields) -> None:
    from sglang_dcp.sglang.messages import DcpPieces

    msg = DcpPieces(dcp_rank=rt.rank, **fields)
    led = rt.ledger
    if led.inbox is None:
        led.pending.append(msg)
    else:
        led._send(led.inbox, msg)
