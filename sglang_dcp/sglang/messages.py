"""sglang-dcp's own IPC messages, msgspec structs in SGLang's wire format.

``register_types()`` (``io_struct.hook_custom_types``) adds them to the decoder union of the
calling process; the plugin calls it in every process that runs it, before any socket is read.
"""

from __future__ import annotations

from typing import List, Optional, Union

from sglang.srt.managers.io_struct import (
    BaseBatchReq,
    BaseReq,
    TokenizedGenerateReqInput,
    hook_custom_types,
)

from sglang_dcp.types import Placement, Shard


class DcpFinished(BaseBatchReq, kw_only=True):
    """Tokenizer manager -> DP controller: these requests finished or were aborted.

    Rides the tokenizer's ``send_to_scheduler`` socket, which in DP mode is the DP controller's
    PULL socket, so the planner can free what it reserved (``rids`` is ``BaseBatchReq``'s).
    """


class DcpGenerateReq(TokenizedGenerateReqInput, kw_only=True):
    """DP controller -> home scheduler: a tokenized request together with its placement.

    A subclass of SGLang's request, not a message of its own, for two reasons found in 0.5.21's
    ``request_receiver.py``: under DP attention a scheduler keeps only *work* requests (the four
    tokenized request types, l.311) from its own socket, while every other message is replaced by
    what global rank 0 received (``broadcast_pyobj`` from ``tp_group.ranks[0]``, l.200); and work
    requests are handled before control messages of the same poll. As a subclass it is a work
    request, and ``TypeBasedDispatcher`` (MRO match) hands it to ``handle_generate_request``.

    ``dcp_shards``: ``[[rank, start, end], ...]`` in token order, the tail on ``dcp_home``.
    """

    dcp_home: int = -1
    dcp_shards: Optional[List[List[int]]] = None
    dcp_adopt: bool = False  # placed on cached pieces: wait for their ``DcpAdopt`` (piece_adopt.py)

    @classmethod
    def wrap(cls, req: TokenizedGenerateReqInput, placement: Placement,
             adopt: bool = False) -> "DcpGenerateReq":  # fmt: skip
        fields = {f: getattr(req, f) for f in req.__struct_fields__}
        return cls(
            **fields,
            dcp_home=placement.home_rank,
            dcp_shards=[[s.rank, s.start, s.end] for s in placement.shards],
            dcp_adopt=adopt,
        )

    def placement(self) -> Placement:
        return Placement(
            self.rid, self.dcp_home, tuple(Shard(r, a, b) for r, a, b in self.dcp_shards or ())
        )


class DcpShardReport(BaseReq, kw_only=True):
    """Home scheduler -> DP controller (its ledger inbox, ``ledger.py``): where the sealed KV of
    the requests it just shipped really is.

    ``sealed[i]``: ``[[rank, start, end], ...]`` of ``rids[i]`` in token order, covering the
    tokens before the tail (a failed move's range on the home); ``moves_done`` /
    ``moves_failed``: this report's moves, for the controller's log.
    """

    dcp_rank: int = -1
    rids: Optional[List[str]] = None
    sealed: Optional[List[List[List[int]]]] = None
    moves_done: int = 0
    moves_failed: int = 0


class DcpPlannerView(BaseReq, kw_only=True):
    """DP controller -> every scheduler (a control message: rank 0 broadcasts it): the planner's
    books per rank, and the address of the controller's ledger inbox."""

    inbox: str = ""
    kv_tokens: Optional[List[int]] = None  # reserved KV per rank
    guest_kv_tokens: Optional[List[int]] = None  # sealed KV held for other ranks' requests
    piece_kv_tokens: Optional[List[int]] = None  # cached pieces per rank (piece_books.py)


class DcpPieces(BaseReq, kw_only=True):
    """Scheduler -> DP controller (its ledger inbox; ``piece_release.py``): pieces this rank's
    requests left cached (``cached[i]``: ``[rank, start, end]`` of ``rid``, ``keys[i]``: the hex
    key of its token prefix up to ``end``), or pieces this rank's cache freed (``evicted``:
    ``[[rid, start], ...]``)."""

    dcp_rank: int = -1
    cached: Optional[List[List[int]]] = None
    keys: Optional[List[str]] = None
    evicted: Optional[List[List[Union[str, int]]]] = None


class DcpAdopt(BaseReq, kw_only=True):
    """DP controller -> every scheduler (a control message): request ``rid`` homed on ``home``
    adopts these cached pieces (``pieces[i]``: ``[rank, start, end, owner_rid, owner_start]`` in
    token order) as its KV (``piece_adopt.py``)."""

    home: int = -1
    pieces: Optional[List[List[Union[str, int]]]] = None


class DcpMigrate(BaseReq, kw_only=True):
    """DP controller -> every scheduler (a control message): move these sealed ranges of
    decoding requests (``moves[i]``: ``[rid, src, dst, start, end]``); each request's home
    runs them at its next decode steps (``migration.py``) and reports the result."""

    moves: Optional[List[List[Union[str, int]]]] = None


class DcpLand(BaseReq, kw_only=True):
    """DP controller -> every scheduler (a control message) of a PD decode server: request
    ``rid`` (bootstrap room ``bootstrap_room`` of the prefill server at ``bootstrap_host:port``,
    ``prompt_len`` tokens) is placed on several ranks; each holder registers for its ranges
    (``pd_landing.py``). ``dcp_shards`` as in ``DcpGenerateReq``."""

    bootstrap_host: str = ""
    bootstrap_port: int = 0
    bootstrap_room: int = 0
    prompt_len: int = 0
    dcp_home: int = -1
    dcp_shards: Optional[List[List[int]]] = None

    def placement(self) -> Placement:
        return Placement(
            self.rid, self.dcp_home, tuple(Shard(r, a, b) for r, a, b in self.dcp_shards or ())
        )


class DcpLandDrop(BaseReq, kw_only=True):
    """DP controller -> every scheduler (a control message) of a PD decode server: the landing
    request ``rid`` ended (finished, failed or aborted); a receiver of it still waiting for KV
    is aborted, its slots freed (``pd_cleanup.py``)."""

    reason: str = ""


def register_types() -> None:
    hook_custom_types(DcpFinished, DcpGenerateReq, DcpShardReport, DcpPlannerView, DcpMigrate,
                      DcpPieces, DcpAdopt, DcpLand, DcpLandDrop)
