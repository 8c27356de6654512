"""Glue between SGLang 0.5.21's ``DataParallelController`` (DPC) and ``DcpDispatcher``.

Runs in the DPC process, from the AFTER hook on ``DataParallelController.__init__`` (hooks.py).
Reads what it needs from the controller once, builds the planner, and rewires two things:

- ``controller.dispatching`` (data_parallel_controller.py:167-173, called by
  ``dispatching_with_trace`` l.326 for every tokenized request) -> ``DcpDispatcher.dispatch``;
- ``controller._request_dispatcher`` (built in ``init_dispatcher`` l.352) gains a handler for
  ``DcpFinished`` notices from the tokenizer manager (notices.py).

A request the planner placed goes to its home rank wrapped with its placement
(``messages.DcpPlacedBatch``); the home scheduler sets ``req.dcp`` from it (placements.py).

Rejections are answered from here: an ``AbortReq`` with a 400 finish reason goes straight to the
tokenizer manager's PULL socket (``port_args.tokenizer_ipc_name``, as a scheduler's
``send_to_tokenizer`` does, scheduler_components/ipc_channels.py:52), which turns it into an
HTTP 400 (tokenizer_manager.py:1800, ``_handle_abort_finish_reason``).
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus

from sglang_dcp.sglang.dispatcher import DcpDispatcher
from sglang_dcp.sglang.options import DcpOptions

logger = logging.getLogger(__name__)

PLANNER_PAGE = 64  # tokens; the planner's page is a multiple of SGLang's --page-size


def planner_page(sglang_page_size: int | None) -> int:
    p = max(1, int(sglang_page_size or 1))
    return PLANNER_PAGE * p // math.gcd(PLANNER_PAGE, p)


def attach(controller, options: DcpOptions) -> DcpDispatcher:
    """Build the planner for ``controller`` and route its requests through it."""
    import zmq
    from sglang.srt.constants import HEALTH_CHECK_RID_PREFIX
    from sglang.srt.managers.io_struct import AbortReq, sock_send
    from sglang.srt.utils.network import get_zmq_socket
    from sglang.utils import TypeBasedDispatcher

    from sglang_dcp.planner import ClusterSpec, make_policy
    from sglang_dcp.sglang.messages import DcpFinished, placed

    n = controller.launch_dp_size
    page = planner_page(getattr(controller.server_args, "page_size", 1))
    cluster = ClusterSpec.uniform(n, controller.max_total_num_tokens, page)
    profile = options.profile if options.policy == "dcp" else None
    policy = make_policy(options.policy, cluster, profile, **options.policy_options())
    tokenizer_ipc = controller.port_args.tokenizer_ipc_name
    sockets: dict[str, object] = {}

    def send(rank: int, req) -> None:
        if req.rid in policy:  # placed: the placement rides with the request (messages.py)
            req = placed(req, policy.placement(req.rid))
        sock_send(controller.workers[rank], req)

    def reject(req, reason: str) -> None:
        # The tokenizer that sent it (several tokenizer workers stamp http_worker_ipc).
        ipc = getattr(req, "http_worker_ipc", None) or tokenizer_ipc
        if ipc not in sockets:
            sockets[ipc] = get_zmq_socket(controller.context, zmq.PUSH, ipc, False)
        reason = f"sglang-dcp planner rejected the request: {reason}"
        finish = {"type": "abort", "message": reason, "status_code": int(HTTPStatus.BAD_REQUEST)}
        sock_send(sockets[ipc], AbortReq(rid=req.rid, finished_reason=finish, abort_message=reason))

    def active_ranks():
        return [r for r in controller._active_workers if controller.workers[r] is not None]

    dispatcher = DcpDispatcher(
        policy,
        send=send,
        reject=reject,
        active_ranks=active_ranks,
        untracked_prefixes=(HEALTH_CHECK_RID_PREFIX,),
    )
    controller.dcp_dispatcher = dispatcher
    controller.dispatching = dispatcher.dispatch
    # SGLang's own load snapshots only feed its DPBudget; the planner keeps its own books.
    controller.refresh_load_budget_on_dispatch = False
    controller._request_dispatcher += TypeBasedDispatcher(
        [(DcpFinished, lambda msg: dispatcher.finished(msg.rids))]
    )
    logger.info(
        "sglang_dcp: planner %s routes requests in the DP controller (%d ranks, %d KV tokens "
        "each, page %d, max degree %d)",
        options.policy, n, cluster.kv_capacity[0], page, options.max_degree,
    )  # fmt: skip
    return dispatcher
