"""sglang-dcp's own IPC messages, msgspec structs in SGLang's wire format.

``register_types()`` (``io_struct.hook_custom_types``) adds them to the decoder union of the
calling process; the plugin calls it in every process that runs it, before any socket is read.
"""

from __future__ import annotations

from sglang.srt.managers.io_struct import BaseBatchReq, hook_custom_types


class DcpFinished(BaseBatchReq, kw_only=True):
    """Tokenizer manager -> DP controller: these requests finished or were aborted.

    Rides the tokenizer's ``send_to_scheduler`` socket, which in DP mode is the DP controller's
    PULL socket, so the planner can free what it reserved (``rids`` is ``BaseBatchReq``'s).
    """


def register_types() -> None:
    hook_custom_types(DcpFinished)
