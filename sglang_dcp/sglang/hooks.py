"""Every runtime hook sglang-dcp puts on SGLang, in one table (pinned: SGLang 0.5.21).

Each ``Hook`` names its upstream target (a dotted path for ``HookRegistry``), the hook type, the
parameter names the target must have, our function, and where and when it is installed.
``install()`` asserts each target's signature before registering it, so moving the SGLang pin
fails loudly at startup instead of misbehaving. ``USES`` lists SGLang callables the glue calls
(not hooks) with the same check; ``test/sglang/test_hooks.py`` checks both against the
installed wheel.

| target (sglang/srt/managers/...) -> ours (sglang_dcp.sglang.) | type   | where/when   |
|---------------------------------------------------------------|--------|--------------|
| data_parallel_controller.py:143                               | AFTER  | any/always   |
|   DataParallelController.__init__                             |        |              |
|   -> plugin._on_dp_controller_ready                           |        |              |
| tokenizer_manager.py:2345 (async)                             | AROUND | launcher/dcp |
|   TokenizerManager._handle_batch_output                       |        |              |
|   -> notices.around_handle_batch_output                       |        |              |
| tokenizer_manager.py:3370                                     | AFTER  | launcher/dcp |
|   TokenizerManager._handle_abort_req                          |        |              |
|   -> notices.after_handle_abort_req                           |        |              |
| scheduler.py:1718                                             | AFTER  | any/dcp      |
|   Scheduler.init_request_dispatcher                           |        |              |
|   -> placements.after_init_request_dispatcher                 |        |              |
| scheduler.py:3266                                             | AFTER  | any/dcp      |
|   Scheduler._add_request_to_queue                             |        |              |
|   -> placements.after_add_request_to_queue                    |        |              |
| scheduler_components/output_streamer.py:218                   | AROUND | any/dcp      |
|   SchedulerOutputStreamer.build_additional_customized_info    |        |              |
|   -> observe.around_build_additional_customized_info          |        |              |
| tokenizer_manager.py:2666                                     | AROUND | launcher/dcp |
|   TokenizerManager.update_request_meta_info                   |        |              |
|   -> observe.around_update_request_meta_info                  |        |              |
| scheduler_components/load_inquirer.py:95                      | AFTER  | any/dcp      |
|   SchedulerLoadInquirer.get_loads                             |        |              |
|   -> observe.after_get_loads                                  |        |              |
| scheduler.py:3641                                             | AFTER  | any/dcp      |
|   Scheduler.get_next_batch_to_run                             |        |              |
|   -> metrics.after_get_next_batch_to_run                      |        |              |

"launcher": only in the launching process, where SGLang runs the tokenizer manager (one
tokenizer worker; ``launch.py`` refuses ``--tokenizer-worker-num > 1`` with the planner on).
"dcp": only when the launcher's ``--dcp-policy`` is not ``off`` (``options.DcpOptions``).

Not hooks, set up by ``plugin.register()`` with them: the ClassVar
``SchedulerOutputStreamer.has_additional_customized_info`` (output_streamer.py:52, the opt-in of
the hook above, ``observe.enable_output_info``), and the check that the installed SGLang has
patches/0002's ``LoadSnapshot.dcp`` (``observe.require_load_snapshot_section``).
"""

from __future__ import annotations

import inspect
import multiprocessing
import pkgutil
from dataclasses import dataclass

_DPC = "sglang.srt.managers.data_parallel_controller.DataParallelController"
_TM = "sglang.srt.managers.tokenizer_manager.TokenizerManager"
_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_STREAMER = "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
_LOADS = "sglang.srt.managers.scheduler_components.load_inquirer.SchedulerLoadInquirer"


@dataclass(frozen=True, slots=True)
class Hook:
    target: str  # dotted path, as HookRegistry resolves it
    kind: str  # HookType name: BEFORE | AFTER | AROUND | REPLACE
    params: tuple[str, ...]  # the target's parameter names, in order
    hook: str  # "module:function" of ours
    where: str = "any"  # "any" process that loads plugins | "launcher" only
    when: str = "dcp"  # "always" | "dcp" (planner on)


HOOKS: tuple[Hook, ...] = (
    Hook(
        f"{_DPC}.__init__", "AFTER",
        ("self", "server_args", "port_args", "run_scheduler_process_func"),
        "sglang_dcp.sglang.plugin:_on_dp_controller_ready", when="always",
    ),
    Hook(
        f"{_TM}._handle_batch_output", "AROUND", ("self", "recv_obj"),
        "sglang_dcp.sglang.notices:around_handle_batch_output", where="launcher",
    ),
    Hook(
        f"{_TM}._handle_abort_req", "AFTER", ("self", "recv_obj"),
        "sglang_dcp.sglang.notices:after_handle_abort_req", where="launcher",
    ),
    # observability: req.dcp on the home scheduler (degree-1 placement plumbing, placements.py),
    # meta_info["dcp"] and the /v1/loads section (observe.py), Prometheus (metrics.py)
    Hook(
        f"{_SCHED}.init_request_dispatcher", "AFTER", ("self",),
        "sglang_dcp.sglang.placements:after_init_request_dispatcher",
    ),
    Hook(
        f"{_SCHED}._add_request_to_queue", "AFTER", ("self", "req", "is_retracted"),
        "sglang_dcp.sglang.placements:after_add_request_to_queue",
    ),
    Hook(
        f"{_STREAMER}.build_additional_customized_info", "AROUND", ("self", "reqs"),
        "sglang_dcp.sglang.observe:around_build_additional_customized_info",
    ),
    Hook(
        f"{_TM}.update_request_meta_info", "AROUND",
        ("self", "meta_info", "state", "customized_info", "index", "finish_reason"),
        "sglang_dcp.sglang.observe:around_update_request_meta_info", where="launcher",
    ),
    Hook(
        f"{_LOADS}.get_loads", "AFTER", ("self",),
        "sglang_dcp.sglang.observe:after_get_loads",
    ),
    Hook(
        f"{_SCHED}.get_next_batch_to_run", "AFTER", ("self", "running_batch", "last_batch"),
        "sglang_dcp.sglang.metrics:after_get_next_batch_to_run",
    ),
)  # fmt: skip

# SGLang callables (and instance attributes set in __init__) the glue relies on without hooking.
USES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # calls self.dispatching, which dpc.attach replaces
    (f"{_DPC}.dispatching_with_trace", ("self", "req", "refresh_load_budget")),
    (f"{_DPC}.init_dispatcher", ("self",)),  # builds ._request_dispatcher
    (f"{_TM}._dispatch_to_scheduler", ("self", "obj")),
    ("sglang.srt.managers.io_struct.hook_custom_types", ("new_types",)),
    ("sglang.srt.managers.io_struct.sock_send", ("socket", "obj", "flags")),
    ("sglang.utils.TypeBasedDispatcher.__iadd__", ("self", "other")),
    ("sglang.srt.utils.network.get_zmq_socket", ("context", "socket_type", "endpoint", "bind")),
    (f"{_SCHED}.handle_batch_generate_request", ("self", "recv_req")),  # placements.py
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


def _is_launcher() -> bool:
    return multiprocessing.parent_process() is None


def selected(dcp_enabled: bool, launcher: bool) -> list[Hook]:
    return [
        h
        for h in HOOKS
        if (h.when == "always" or dcp_enabled) and (h.where == "any" or launcher)
    ]


_INSTALLED: set[Hook] = set()


def install(dcp_enabled: bool, *, apply: bool = False) -> list[Hook]:
    """Check and register the hooks this process needs that are not registered yet.

    ``load_plugins()`` applies what ``register()`` registers. The launcher learns whether the
    planner is on only after parsing (it loads plugins first, so that plugin-added choices
    parse), so it calls ``install(True, apply=True)`` again for the rest.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    chosen = [h for h in selected(dcp_enabled, _is_launcher()) if h not in _INSTALLED]
    for h in chosen:
        check(h.target, h.params)
    for h in chosen:
        HookRegistry.register(h.target, pkgutil.resolve_name(h.hook), HookType[h.kind])
        _INSTALLED.add(h)
    if apply and chosen:
        HookRegistry.apply_hooks()
    return chosen
