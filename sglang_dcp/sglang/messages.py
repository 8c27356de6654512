"""sglang-dcp's own IPC messages, msgspec structs in SGLang's wire format.

``register_types()`` (``io_struct.hook_custom_types``) adds them to the decoder union of the
calling process; the plugin calls it in every process that runs it, before any socket is read.

Why a placement rides *inside* a work message (SGLang 0.5.21,
``scheduler_components/request_receiver.py``): under DP attention a scheduler splits what it
received into work (tokenized requests, l.311) and control messages and handles the work first
(l.206), and unless ``--enable-dp-attention-local-control-broadcast`` is set the control list is
taken from DP rank 0 and broadcast over the TP group (l.200), replacing what other ranks
received. A placement sent as its own message could thus arrive after its request, or not at
all on ranks other than 0. ``DcpPlacedBatch`` is a ``BatchTokenizedGenerateReqInput``, so it is
work: ordered with the request, kept by its own rank.
"""

from __future__ import annotations

from sglang.srt.managers.io_struct import (
    BaseBatchReq,
    BaseReq,
    BatchTokenizedGenerateReqInput,
    hook_custom_types,
)

from sglang_dcp.types import Placement, Shard


class DcpFinished(BaseBatchReq, kw_only=True):
    """Tokenizer manager -> DP controller: these requests finished or were aborted.

    Rides the tokenizer's ``send_to_scheduler`` socket, which in DP mode is the DP controller's
    PULL socket, so the planner can free what it reserved (``rids`` is ``BaseBatchReq``'s).
    """


class DcpPlacementMsg(BaseReq, kw_only=True):
    """Where the planner put request ``rid``: ``types.Placement`` on the wire."""

    home_rank: int
    shards: list[list[int]]  # [[rank, start, end], ...] in token order, tail (home) last

    @classmethod
    def of(cls, placement: Placement) -> DcpPlacementMsg:
        return cls(
            rid=placement.rid,
            home_rank=placement.home_rank,
            shards=[[s.rank, s.start, s.end] for s in placement.shards],
        )

    def to_placement(self) -> Placement:
        return Placement(self.rid, self.home_rank, tuple(Shard(*s) for s in self.shards))


class DcpPlacedBatch(BatchTokenizedGenerateReqInput, kw_only=True):
    """DP controller -> scheduler: tokenized requests with their placements (one per request,
    same order). The scheduler handles ``batch`` as SGLang's own batch (placements.py)."""

    placements: list[DcpPlacementMsg]


def placed(req, placement: Placement) -> DcpPlacedBatch:
    """``req`` (a ``TokenizedGenerateReqInput``) wrapped with its placement."""
    return DcpPlacedBatch(batch=[req], rids=[req.rid], placements=[DcpPlacementMsg.of(placement)])


def register_types() -> None:
    hook_custom_types(DcpFinished, DcpPlacementMsg, DcpPlacedBatch)
