"""The DP controller's view of the ranks' cached pieces (issue 26, parts 2 and 4): a
``planner.pieces.PieceDirectory`` fed by the ranks' ``DcpPieces`` reports (``piece_release.py``).

- a home's report of a released split request: its ranges and their prefix keys -> ``cache``;
- any rank's report of the pieces its cache freed -> ``evicted``.

Each change publishes the directory's piece tokens per rank to the schedulers
(``DcpPlannerView.piece_kv_tokens``), shown in ``/v1/loads`` as ``planner_piece_kv_tokens`` next to
the rank's own ``piece_kv_tokens``: once reports drain the two agree, after aborts, retractions and
failed moves too (``test/e2e/test_prefix_cache.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from sglang_dcp.planner.pieces import KEY_PAGE, CachedLayout, Piece, PieceDirectory


class PieceBooks:
    """``publish(piece_kv_tokens)`` sends the per-rank view to every scheduler."""

    def __init__(self, num_ranks: int, publish: Callable[[list[int]], None],
                 announce: Callable[[str, CachedLayout], None]) -> None:  # fmt: skip
        self.directory = PieceDirectory(num_ranks, KEY_PAGE)
        self._publish = publish
        self.announce = announce  # a DcpAdopt to every rank
        self.adopting: set[str] = set()  # placed on pieces, not yet sent to their home
        self.num_reports = 0

    def on_pieces(self, msg) -> None:
        d = self.directory
        if msg.cached:
            if len(msg.keys or ()) != len(msg.cached):
                raise ValueError(f"DcpPieces from rank {msg.dcp_rank}: {len(msg.cached)} "
                                 f"ranges but {len(msg.keys or ())} keys")  # fmt: skip
            d.cache(Piece(r, a, b, bytes.fromhex(k), (msg.rid, a))
                    for (r, a, b), k in zip(msg.cached, msg.keys))  # fmt: skip
        if msg.evicted:
            d.evicted(msg.dcp_rank, [(rid, int(a)) for rid, a in msg.evicted])
        self.num_reports += 1
        self._publish(self.view())

    # -- placing a request on its cached layout (part 3) ----------------------------------------
    def admit(self, policy, req, request):
        """``request`` (``types.Request`` of ``req``) on the cached layout its prompt extends:
        the planner books it with the layout's home pinned and its head pieces as sealed
        ranges (``restate``); the pieces leave the directory (live now) and every rank is told
        (``announce``). ``None``: no layout over several ranks, or the planner cannot take it
        there (the caller places it as if nothing were cached)."""
        from sglang_dcp.types import Placement, Rejection, Shard

        ids = getattr(req, "input_ids", None) or ()
        lay = self.directory.layout(ids)
        if lay is None or len({p.rank for p in lay.pieces}) < 2:
            return None
        got = policy.admit(request, home_rank=lay.home)
        if isinstance(got, Rejection):
            return None
        *head, tail = lay.pieces
        try:
            policy.restate(request.rid, [[p.rank, p.start, p.end] for p in head])
        except ValueError:  # not on the planner's pages: as planned, recomputed
            return got
        self.directory.take(lay)
        shards = [Shard(p.rank, p.start, p.end) for p in head]
        placement = Placement(request.rid, lay.home,
                              (*shards, Shard(lay.home, tail.start, got.shards[-1].end)))
        self.announce(request.rid, lay)
        self.adopting.add(request.rid)
        self._publish(self.view())
        return placement

    def view(self) -> list[int]:
        return [self.directory.tokens(r) for r in range(self.directory.num_ranks)]


def attach(controller, *, sharding: bool, num_ranks: int, inbox: str):
    """``PieceBooks`` on ``controller`` (its ``DcpPieces`` handler, ``dcp_dispatcher.pieces``),
    or ``None``: no sharding, or ``--disable-radix-cache`` (ranks then keep no pieces)."""
    if not sharding or getattr(controller.server_args, "disable_radix_cache", True):
        return None
    from sglang.utils import TypeBasedDispatcher

    from sglang_dcp.sglang.messages import DcpAdopt, DcpPieces, DcpPlannerView

    def publish(tokens: list[int]) -> None:
        controller.send_control_message(DcpPlannerView(inbox=inbox, piece_kv_tokens=tokens))

    def announce(rid: str, lay: CachedLayout) -> None:
        pieces = [[p.rank, p.start, p.end, p.owner[0], p.owner[1]] for p in lay.pieces]
        controller.send_control_message(DcpAdopt(rid=rid, home=lay.home, pieces=pieces))

    books = controller.dcp_pieces = PieceBooks(num_ranks, publish, announce)
    controller.dcp_dispatcher.pieces = books
    controller._request_dispatcher += TypeBasedDispatcher([(DcpPieces, books.on_pieces)])
    return books
