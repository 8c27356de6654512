"""SGLang callables (and instance attributes set in ``__init__``) the glue relies on without
hooking, with the parameter names the pinned SGLang 0.5.21 has (``check`` below;
``test/sglang/test_hooks.py`` checks them against the installed wheel)."""

from __future__ import annotations

import inspect
import pkgutil

_DPC = "sglang.srt.managers.data_parallel_controller.DataParallelController"
_TM = "sglang.srt.managers.tokenizer_manager.TokenizerManager"
_SCHED = "sglang.srt.managers.scheduler.Scheduler"

# SGLang callables (and instance attributes set in __init__) the glue relies on without hooking.
USES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # calls self.dispatching, which dpc.attach replaces
    (f"{_DPC}.dispatching_with_trace", ("self", "req", "refresh_load_budget")),
    (f"{_DPC}.init_dispatcher", ("self",)),  # builds ._request_dispatcher
    (f"{_DPC}.event_loop", ("self",)),  # replaced per instance by dpc.event_loop
    ("sglang.srt.managers.io_struct.sock_recv", ("socket", "flags")),
    (f"{_TM}._dispatch_to_scheduler", ("self", "obj")),
    ("sglang.srt.managers.io_struct.hook_custom_types", ("new_types",)),
    ("sglang.srt.managers.io_struct.sock_send", ("socket", "obj", "flags")),
    ("sglang.utils.TypeBasedDispatcher.__iadd__", ("self", "other")),
    ("sglang.srt.utils.network.get_zmq_socket", ("context", "socket_type", "endpoint", "bind")),
    ("sglang.srt.layers.attention.attention_registry.register_attention_backend", ("name",)),
    ("sglang.srt.mem_cache.memory_pool.KVWriteLoc", ("loc", "swa_loc", "full_loc")),
    # the exchange's all-to-all (exchange.comm.GroupCommunicator)
    ("sglang.srt.distributed.parallel_state.GroupCoordinator.all_to_all_single",
     ("self", "output", "input")),
    ("sglang.srt.distributed.parallel_state.GroupCoordinator._all_to_all_single",
     ("self", "output", "input")),
    # the ledger (ledger.py, dpc.py): the planner's view to the schedulers, the inbox address,
    # a retraction (not finished) vs a finish on release
    (f"{_DPC}.send_control_message", ("self", "obj")),
    ("sglang.srt.utils.network.NetworkAddress.parse", ("addr",)),
    ("sglang.srt.utils.network.NetworkAddress.to_tcp", ("self",)),
    ("sglang.srt.managers.schedule_batch.Req.finished", ("self",)),
    # prefill into shards: a failed chunk move ends the request as SGLang's chunked abort does
    ("sglang.srt.disaggregation.utils.prepare_abort", ("req", "error_message", "status_code")),
    (f"{_SCHED}._release_aborted_request", ("self", "req")),
    # the planner's prefill chunk: SGLang's resolved per-rank --chunked-prefill-size (dpc.py)
    ("sglang.srt.arg_groups.model_override_base.resolved_view", ("server_args",)),
)


class HookSignatureError(RuntimeError):
    pass


def params_of(target: str) -> tuple[str, ...]:
    """Parameter names of ``target`` (unwrapping hook wrappers) in the installed SGLang."""
    return tuple(inspect.signature(inspect.unwrap(pkgutil.resolve_name(target))).parameters)


def check(target: str, expected: tuple[str, ...]) -> None:
    got = params_of(target)
    if got != expected:
        raise HookSignatureError(
            f"sglang-dcp hook target {target} has parameters {got}, expected {expected}: the "
            "installed SGLang is not the pinned 0.5.21 (see patches/README.md)"
        )
