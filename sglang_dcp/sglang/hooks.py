"""Every runtime hook sglang-dcp puts on SGLang, in one table (pinned: SGLang 0.5.21).

Each ``Hook`` names its upstream target (a dotted path for ``HookRegistry``), the hook type, the
parameter names the target must have, our function, and where and when it is installed.
``install()`` asserts each target's signature before registering it, so moving the SGLang pin
fails loudly at startup instead of misbehaving. ``USES`` lists SGLang callables the glue calls
(not hooks) with the same check; ``test/sglang/test_hooks.py`` checks both against the
installed wheel.

| target (sglang/srt/managers/...)           | type   | ours (sglang_dcp.sglang.)   | where/when  |
|--------------------------------------------|--------|-----------------------------|-------------|
| data_parallel_controller.py:143            | AFTER  | plugin.                     | any/always  |
|   DataParallelController.__init__          |        |   _on_dp_controller_ready   |             |
| tokenizer_manager.py:2345 (async)          | AROUND | notices.                    | launcher/dcp|
|   TokenizerManager._handle_batch_output    |        |   around_handle_batch_output|             |
| tokenizer_manager.py:3370                  | AFTER  | notices.                    | launcher/dcp|
|   TokenizerManager._handle_abort_req       |        |   after_handle_abort_req    |             |

"launcher": only in the launching process, where SGLang runs the tokenizer manager (one
tokenizer worker; ``launch.py`` refuses ``--tokenizer-worker-num > 1`` with the planner on).
"dcp": only when the launcher's ``--dcp-policy`` is not ``off`` (``options.DcpOptions``).
"""

from __future__ import annotations

import inspect
import multiprocessing
import pkgutil
from dataclasses import dataclass

_DPC = "sglang.srt.managers.data_parallel_controller.DataParallelController"
_TM = "sglang.srt.managers.tokenizer_manager.TokenizerManager"


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
