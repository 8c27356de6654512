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

from sglang_dcp.planner.pieces import Piece, PieceDirectory


class PieceBooks:
    """``publish(piece_kv_tokens)`` sends the per-rank view to every scheduler."""

    def __init__(self, num_ranks: int, page: int, publish: Callable[[list[int]], None]) -> None:
        self.directory = PieceDirectory(num_ranks, page)
        self._publish = publish
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

    def view(self) -> list[int]:
        return [self.directory.tokens(r) for r in range(self.directory.num_ranks)]


def attach(controller, *, sharding: bool, num_ranks: int, page: int, inbox: str):
    """``PieceBooks`` on ``controller`` (its ``DcpPieces`` handler), or ``None``: no sharding, or
    ``--disable-radix-cache`` (ranks then keep no pieces)."""
    if not sharding or getattr(controller.server_args, "disable_radix_cache", True):
        return None
    from sglang.utils import TypeBasedDispatcher

    from sglang_dcp.sglang.messages import DcpPieces, DcpPlannerView

    def publish(tokens: list[int]) -> None:
        controller.send_control_message(DcpPlannerView(inbox=inbox, piece_kv_tokens=tokens))

    books = controller.dcp_pieces = PieceBooks(num_ranks, page, publish)
    controller._request_dispatcher += TypeBasedDispatcher([(DcpPieces, books.on_pieces)])
    return books
