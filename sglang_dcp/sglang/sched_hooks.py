"""The scheduler-side SGLang hooks of DCP serving (hooks.py lists them): thin glue from SGLang's
call sites to this rank's ``datapath.RankRuntime``.

- ``Scheduler.init_request_dispatcher``: build the runtime once the pools exist;
- ``Scheduler.handle_generate_request`` / ``_add_request_to_queue``: the placement that came with
  a request becomes ``req.dcp``;
- ``dp_attn.prepare_mlp_sync_batch_raw``: the step header around SGLang's per-step gather;
- ``Scheduler.run_batch``: ship a prefill chunk's pieces after its forward (prefill_shards.py);
- ``BasePrefixCache.free_kv_row``, ``common.release_kv_cache``: never free shipped ranges, never
  insert a split request into the radix tree, tell the guests at release;
- ``SchedulerInvariantChecker._check_full_pool``: guest slots are held, not leaked.
"""

from __future__ import annotations

from sglang_dcp.sglang import ledger, pd_landing
from sglang_dcp.sglang.context import runtime
from sglang_dcp.sglang.datapath import RankRuntime
from sglang_dcp.sglang.layout import subtract


def after_init_request_dispatcher(result, self, *args, **kwargs):
    """``Scheduler.init_request_dispatcher`` (scheduler.py:1718) runs once in ``__init__``, after
    the pools exist: build this rank's runtime."""
    from sglang_dcp.sglang import hooks
    from sglang_dcp.sglang.context import ctx
    from sglang_dcp.sglang.options import DcpOptions

    options = DcpOptions.from_env()
    hooks.assert_applied(options.enabled, options.sharding)
    rt = RankRuntime(self)
    ctx().set_runtime(rt)
    ledger.listen(self, rt.ledger)
    _listen_for_migrations(self, rt)
    from sglang_dcp.sglang.piece_adopt import listen

    listen(self, rt)  # requests placed on cached pieces (DcpAdopt)
    return result


def _listen_for_migrations(scheduler, rt: RankRuntime) -> None:
    """The controller's ``DcpMigrate`` (every rank gets it) to the homes' queues."""
    from sglang.utils import TypeBasedDispatcher

    from sglang_dcp.planner.base import Migration
    from sglang_dcp.sglang.messages import DcpLand, DcpLandDrop, DcpMigrate
    from sglang_dcp.sglang.pd_cleanup import on_drop

    def on_migrate(msg) -> None:
        moves = [Migration(str(r), *map(int, rest)) for r, *rest in msg.moves or ()]
        rt.migrations.ask(moves, lambda rid: rid in rt.split_reqs)

    def on_land(msg) -> None:
        pd_landing.on_land(rt, scheduler, msg)

    scheduler._request_dispatcher += TypeBasedDispatcher(
        [(DcpMigrate, on_migrate), (DcpLand, on_land),
         (DcpLandDrop, lambda msg: on_drop(rt, scheduler, msg))]
    )


def around_handle_generate_request(original, self, recv_req, *args, **kwargs):
    """``Scheduler.handle_generate_request`` (scheduler.py): remember the placement that came with
    the request while SGLang builds its ``Req``."""
    from sglang_dcp.sglang.messages import DcpGenerateReq

    rt = runtime()
    if rt is None or not isinstance(recv_req, DcpGenerateReq):
        return original(self, recv_req, *args, **kwargs)
    from sglang_dcp.sglang.admission import lifted_limits

    from sglang_dcp.sglang import piece_adopt

    if piece_adopt.hold(rt, recv_req):  # placed on cached pieces: after their DcpAdopt
        return None
    p = recv_req.placement()
    rt.expect(recv_req.rid, p)
    try:
        with lifted_limits(self, p, len(recv_req.input_ids or ())):
            return original(self, recv_req, *args, **kwargs)
    finally:
        rt.forget_unqueued(recv_req.rid, self.grammar_manager.grammar_queue)


def after_add_request_to_queue(result, self, req, *args, **kwargs):
    """``Scheduler._add_request_to_queue`` (scheduler.py:3266): ``req.dcp = placement``."""
    rt = runtime()
    if rt is not None:
        rt.attach(req)
    return result


def around_prepare_mlp_sync(original, local_batch, *args, **kwargs):
    """``dp_attn.prepare_mlp_sync_batch_raw(local_batch, model_runner, ...)`` (dp_attn.py:412):
    the step header first, then SGLang's gather; the step goes on the batch that will run."""
    rt = runtime()
    if rt is None:
        return original(local_batch, *args, **kwargs)
    model_runner = kwargs.get("model_runner", args[0] if args else None)
    rt.begin_header(model_runner)
    if rt.landing:
        pd_landing.poll(rt)
    news, decoding_reqs = rt.before_sync(local_batch, model_runner)
    batch = original(local_batch, *args, **kwargs)  # SGLang's gather carries the news flags
    step = rt.after_sync(news, decoding_reqs, model_runner)
    if getattr(rt, "piece_cache", None) is not None:
        from sglang_dcp.sglang.piece_adopt import reap
        from sglang_dcp.sglang.piece_release import flush_evictions

        reap(rt)  # adopted by a request that ended before its first chunk
        flush_evictions(rt)
    if step is not None:
        if batch is None:  # pragma: no cover - a decoding home always runs
            raise RuntimeError("sglang_dcp: an active DCP step produced no batch on this rank")
        from sglang_dcp.sglang.backend import needs_eager

        if needs_eager(step):  # rounds, or more split rows than the static buffers: eager on
            batch.can_run_decode_cuda_graph = False  # every rank (the step is the same)
    rt.set_step(step)
    return batch


def after_run_batch(result, self, *args, **kwargs):
    """``Scheduler.run_batch(batch)`` (scheduler.py:4338), every rank each iteration any rank
    runs a batch (idle ones included): ship the prefill chunk pieces the header announced."""
    rt = runtime()
    if rt is not None and rt.after:
        from sglang_dcp.sglang.prefill_shards import after_forward

        after_forward(rt)
    return result


def around_free_kv_row(original, self, kv, ranges, *args, **kwargs):
    """``BasePrefixCache.free_kv_row(kv, ranges)`` (base_prefix_cache.py:468): never free a
    range the home shipped away (its slots went back to the allocator at the move)."""
    rt = runtime()
    skip = rt.row_ranges_to_skip(kv.req_pool_idx) if rt is not None else None
    if skip:
        ranges = subtract(list(ranges), skip)
    return original(self, kv, ranges, *args, **kwargs)


def around_release_kv_cache(original, req, tree_cache, *args, **kwargs):
    """``mem_cache.common.release_kv_cache(req, tree_cache, is_insert)`` (common.py:292): a
    split request's KV never goes into the radix tree (``radix.py``), it is freed."""
    rt = runtime()
    if rt is None or (req.rid not in rt.home and req.rid not in rt.split_reqs):
        return original(req, tree_cache, *args, **kwargs)
    from sglang_dcp.sglang import piece_release

    kept = piece_release.home_ranges(rt, req)  # a finished request's own ranges stay cached
    if kept:
        rt.set_layout(req.rid, rt.home[req.rid].layout.with_kept(kept))  # its row skips them
        piece_release.keep_home(rt, req, kept)
    piece_release.report(rt, req, kept)
    try:
        return original(req, tree_cache, is_insert=False)
    finally:
        rt.released(req)  # the home entry, with its skipped rows, goes


def around_check_full_pool(original, self, ps, uncached=0, *args, **kwargs):
    """``SchedulerInvariantChecker._check_full_pool(ps, uncached)`` (invariant_checker.py:95):
    guest slots are held for other ranks' requests, adopted pieces for a request about to
    prefill (piece_adopt.py), not leaked."""
    rt = runtime()
    if rt is not None:
        from sglang_dcp.sglang.piece_adopt import pending_tokens

        uncached = uncached + rt.guest_tokens() + pending_tokens(rt)  # adopted, not started yet
    return original(self, ps, uncached, *args, **kwargs)
