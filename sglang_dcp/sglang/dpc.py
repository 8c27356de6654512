"""Glue between SGLang 0.5.21's ``DataParallelController`` (DPC) and ``DcpDispatcher``.

Runs in the DPC process, from the AFTER hook on ``DataParallelController.__init__`` (hooks.py).
Reads what it needs from the controller once, builds the planner, and rewires two things:

- ``controller.dispatching`` (data_parallel_controller.py:167-173, called by
  ``dispatching_with_trace`` l.326 for every tokenized request) -> ``DcpDispatcher.dispatch``;
- ``controller._request_dispatcher`` (built in ``init_dispatcher`` l.352) gains handlers for
  ``DcpFinished`` notices from the tokenizer manager (notices.py) and for the schedulers'
  ``DcpShardReport`` (ledger.py), which arrive on a PULL socket of ours (the ledger inbox) that
  ``event_loop`` polls with the controller's input; the planner's view goes back to the
  schedulers as a control message (``ledger.PlannerBooks``).

Rejections are answered from here: an ``AbortReq`` with a 400 finish reason goes straight to the
tokenizer manager's PULL socket (``port_args.tokenizer_ipc_name``, as a scheduler's
``send_to_tokenizer`` does, scheduler_components/ipc_channels.py:52), which turns it into an
HTTP 400 (tokenizer_manager.py:1800, ``_handle_abort_finish_reason``).
"""

from __future__ import annotations

import dataclasses

import logging
import math
from http import HTTPStatus

from sglang_dcp.sglang.dispatcher import DcpDispatcher, sglang_max_new_bound
from sglang_dcp.sglang.options import DcpOptions

logger = logging.getLogger(__name__)

PLANNER_PAGE = 64  # tokens; the planner's page is a multiple of SGLang's --page-size


def planner_page(sglang_page_size: int | None) -> int:
    p = max(1, int(sglang_page_size or 1))
    return PLANNER_PAGE * p // math.gcd(PLANNER_PAGE, p)


POLL_MS = 50  # the DP controller's wait for the next message when its socket is empty


def event_loop(controller) -> None:
    """``DataParallelController.event_loop`` (data_parallel_controller.py:794) without the busy
    spin: SGLang 0.5.21 re-polls its socket with ``NOBLOCK`` in a tight loop, a whole core per
    server. Same handling, but empty sockets block in ``zmq.Poller.poll`` (``POLL_MS``). With
    the planner it also reads the ledger inbox (the ranks' ``DcpShardReport``) and publishes
    the planner's view to the ranks (``ledger.PlannerBooks``), and retries the planner's queue
    when a timed wait is over (``wait_queue.py``; at most ``POLL_MS`` late)."""
    import zmq
    from sglang.srt.managers.io_struct import sock_recv

    books = getattr(controller, "dcp_books", None)
    sockets = [controller.recv_from_tokenizer]
    if books is not None:
        sockets.append(controller.dcp_inbox)
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    while True:
        controller.soft_watchdog.feed()
        got = False
        for sock in sockets:
            try:
                recv_req = sock_recv(sock, flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            got = True
            controller._request_dispatcher(recv_req)
        if books is not None:
            books.tick()
            controller.dcp_defrag.on_wait()  # requests waiting for KV: migrate sealed KV
            controller.dcp_dispatcher.poll()  # a timed wait is over: retry (wait_queue.py)
        if not got:
            poller.poll(POLL_MS)


def _ledger_inbox(controller):
    """A PULL socket the schedulers push their ``DcpShardReport`` to, and its address."""
    import zmq
    from sglang.srt.utils.network import NetworkAddress

    # as PortArgs.init_new (server_args.py:724): schedulers on other nodes reach dist_init_addr
    addr = getattr(controller.server_args, "dist_init_addr", None)
    host = "127.0.0.1" if addr is None else NetworkAddress.parse(addr).host
    sock = zmq.Context.instance().socket(zmq.PULL)
    port = sock.bind_to_random_port(f"tcp://{host}")
    return sock, NetworkAddress(host, port).to_tcp()


def _max_new_bound(controller, prefill_chunk: int | None = None, pd_decode: bool = False):
    """``prompt_len -> `` the most new tokens SGLang's schedulers will decode for it
    (``dispatcher.sglang_max_new_bound``), from what the DP controller learnt from rank 0
    (data_parallel_controller.py:726: ``max_req_input_len`` is ``max_req_len - 5``,
    tp_worker.py:548)."""
    from sglang.srt.environ import envs

    input_len = getattr(controller, "max_req_input_len", None)
    pool = controller.max_total_num_tokens
    max_req_len = input_len + 5 if input_len is not None else pool - 1
    page = max(1, int(getattr(controller.server_args, "page_size", 1) or 1))
    limit = envs.SGLANG_MAX_NEW_TOKENS_LIMIT.get()

    def bound(prompt: int) -> int:
        if (prefill_chunk or pd_decode) and input_len is not None and prompt >= input_len:
            # prefill into shards, PD landing: SGLang's checks see only the home's share of the
            # prompt (admission.lifted_limits); its new tokens still fit in one rank's pool
            return max(0, min(pool - page - 1, limit or pool))
        return sglang_max_new_bound(
            prompt, max_req_len=max_req_len, pool_tokens=pool, page=page, limit=limit
        )

    return bound


def _prefix_directory(controller, options: DcpOptions, n: int):
    """The ``dcp`` planner's view of the ranks' radix trees (``planner/prefix.py``), each kept
    to SGLang's pool size; ``None`` with ``--disable-radix-cache`` or another policy."""
    if options.policy != "dcp" or getattr(controller.server_args, "disable_radix_cache", True):
        return None
    from sglang_dcp.planner.prefix import PrefixDirectory

    return PrefixDirectory([controller.max_total_num_tokens] * n)


def attach(controller, options: DcpOptions) -> DcpDispatcher:
    """Build the planner for ``controller`` and route its requests through it."""
    import zmq
    from sglang.srt.arg_groups.model_override_base import resolved_view
    from sglang.srt.constants import HEALTH_CHECK_RID_PREFIX
    from sglang.srt.managers.io_struct import AbortReq, TokenizedGenerateReqInput, sock_send
    from sglang.srt.utils.network import get_zmq_socket
    from sglang.utils import TypeBasedDispatcher

    from sglang_dcp.planner import ClusterSpec, make_policy
    from sglang_dcp.sglang.ledger import PlannerBooks
    from sglang_dcp import env
    from sglang_dcp.sglang.defrag import Defragmenter
    from sglang_dcp.sglang.messages import (
        DcpFinished,
        DcpGenerateReq,
        DcpLand,
        DcpLandDrop,
        DcpMigrate,
        DcpPlannerView,
        DcpShardReport,
    )

    n = controller.launch_dp_size
    page = planner_page(getattr(controller.server_args, "page_size", 1))
    capacity = controller.max_total_num_tokens
    if options.kv_capacity is not None:
        capacity = min(capacity, options.kv_capacity)
    # SGLang 0.5.21 declares the per-rank chunk (chunk // dp_size, parallel_hook.py:264) as a
    # resolution over server_args: the raw field keeps what the user typed (None: the default)
    chunk = getattr(resolved_view(controller.server_args), "chunked_prefill_size", None)
    pd_decode = getattr(controller.server_args, "disaggregation_mode", "null") == "decode"
    # a PD decode server never prefills: its requests arrive with their KV (pd_landing.py)
    chunk = int(chunk) if options.sharding and chunk and chunk > 0 and not pd_decode else None
    if chunk and options.prefill_chunk is None:
        # SGLang's default chunk (none typed): the home's pool must hold its share plus one
        # chunk in flight, so the planner books the part of the chunk its budget's slack below
        # SGLang's pool (--dcp-kv-capacity) does not cover; without it a prompt larger than the
        # pool waited forever in SGLang's PrefillAdder
        transient = chunk - (controller.max_total_num_tokens - capacity)
        if transient > 0:
            options = dataclasses.replace(options, prefill_chunk=transient)
    # the exchange's node scope (options.ranks_per_node; None: one node) is what the planner prices
    cluster = ClusterSpec.uniform(n, capacity, page, ranks_per_node=options.ranks_per_node or n)
    profile = options.profile if options.policy == "dcp" else None
    def new_policy():
        return make_policy(options.policy, cluster, profile, **options.policy_options())

    policy = new_policy()
    tokenizer_ipc = controller.port_args.tokenizer_ipc_name
    sockets: dict[str, object] = {}
    from sglang_dcp.sglang.pd_cleanup import LandingBook

    landing = LandingBook()  # PD: requests landing over several ranks, until they end

    def drop(rids: list[str], reason: str) -> None:  # their holders' receivers (pd_cleanup.py)
        for rid in rids:
            controller.send_control_message(DcpLandDrop(rid=rid, reason=reason))

    def send(rank: int, req, placement) -> None:
        if placement is not None and isinstance(req, TokenizedGenerateReqInput):
            if pd_decode and placement.degree > 1:  # its holders register too (pd_landing.py)
                landing.landed(req.rid)
                controller.send_control_message(DcpLand(
                    rid=req.rid, bootstrap_host=req.bootstrap_host or "",
                    bootstrap_port=int(req.bootstrap_port or 0),
                    bootstrap_room=int(req.bootstrap_room or 0), prompt_len=len(req.input_ids),
                    dcp_home=placement.home_rank,
                    dcp_shards=[[s.rank, s.start, s.end] for s in placement.shards],
                ))  # fmt: skip
            books = getattr(controller, "dcp_pieces", None)  # placed on cached pieces?
            adopt = books is not None and req.rid in books.adopting
            if adopt:
                books.adopting.discard(req.rid)
            req = DcpGenerateReq.wrap(req, placement, adopt=adopt)
        sock_send(controller.workers[rank], req)

    def answer(req, finish: dict, message: str) -> None:
        # The tokenizer that sent it (several tokenizer workers stamp http_worker_ipc).
        ipc = getattr(req, "http_worker_ipc", None) or tokenizer_ipc
        if ipc not in sockets:
            sockets[ipc] = get_zmq_socket(controller.context, zmq.PUSH, ipc, False)
        sock_send(sockets[ipc], AbortReq(rid=req.rid, finished_reason=finish, abort_message=message))

    def reject(req, reason: str) -> None:
        reason = f"sglang-dcp planner rejected the request: {reason}"
        finish = {"type": "abort", "message": reason, "status_code": int(HTTPStatus.BAD_REQUEST)}
        answer(req, finish, reason)

    def active_ranks():
        return [r for r in controller._active_workers if controller.workers[r] is not None]

    dispatcher = DcpDispatcher(
        policy,
        max_new_bound=_max_new_bound(controller, options.prefill_chunk or chunk, pd_decode),
        empty_policy=new_policy,
        send=send,
        reject=reject,
        active_ranks=active_ranks,
        untracked_prefixes=(HEALTH_CHECK_RID_PREFIX,),
        queue=options.policy in ("dcp", "uniform"),
        max_bypass=options.queue_max_bypass,
        prefixes=_prefix_directory(controller, options, n),
    )

    def on_abort(msg) -> None:
        # A request still waiting in the planner's queue: no scheduler holds it, so answer its
        # client here (as a scheduler does for its own waiting queue, scheduler.py:5466).
        for req in dispatcher.drop_queued(msg.rid, msg.abort_all):
            message = "aborted while waiting for KV in the DP controller"
            answer(req, msg.finished_reason or {"type": "abort", "message": message}, message)
        controller.send_control_message(msg)  # what the DPC does with an abort otherwise
        drop(landing.aborted(msg.rid or "", msg.abort_all), "aborted")

    inbox, inbox_address = _ledger_inbox(controller)

    def publish(kv_tokens: list[int], guest_kv_tokens: list[int]) -> None:
        controller.send_control_message(DcpPlannerView(
            inbox=inbox_address, kv_tokens=kv_tokens, guest_kv_tokens=guest_kv_tokens
        ))  # fmt: skip

    books = PlannerBooks(dispatcher, publish)

    def migrate(moves) -> None:
        controller.send_control_message(
            DcpMigrate(moves=[[m.rid, m.src, m.dst, m.start, m.end] for m in moves])
        )

    defrag = Defragmenter(
        dispatcher, migrate, num_ranks=n, max_tokens=max(page, capacity // 8),
        testing=env.test_migrate(),
    )  # fmt: skip

    def on_report(report) -> None:
        books.on_report(report)
        defrag.on_report(report)

    def on_finished(msg) -> None:
        dispatcher.finished(msg.rids)
        defrag.finished(msg.rids)
        drop(landing.ended(msg.rids), "the request ended")

    controller.dcp_dispatcher, controller.dcp_defrag = dispatcher, defrag
    controller.dcp_books, controller.dcp_inbox = books, inbox
    controller.dispatching = dispatcher.dispatch
    controller.event_loop = lambda: event_loop(controller)
    # SGLang's own load snapshots only feed its DPBudget; the planner keeps its own books.
    controller.refresh_load_budget_on_dispatch = False
    controller._request_dispatcher += TypeBasedDispatcher([
        (DcpFinished, on_finished), (AbortReq, on_abort), (DcpShardReport, on_report),
    ])  # fmt: skip
    from sglang_dcp.sglang import piece_books  # cached pieces of split requests (issue 26)

    controller.dcp_dispatcher = dispatcher
    # a PD decode server receives every prompt's KV from the prefill server (pd_landing.py):
    # its ranks keep no pieces, the prefill server's radix cache reuses context there
    piece_books.attach(controller, sharding=options.sharding and not pd_decode, num_ranks=n,
                       inbox=inbox_address)
    books.tick(force=True)  # the ranks learn the inbox before any request arrives
    logger.info(
        "sglang_dcp: planner %s routes requests in the DP controller (%d ranks, %d KV tokens "
        "each, page %d, max degree %d, prefill chunk %s)",
        options.policy, n, cluster.kv_capacity[0], page, options.max_degree, options.prefill_chunk,
    )  # fmt: skip
    return dispatcher
