"""The ``sglang.srt.plugins`` entry point of sglang-dcp.

SGLang 0.5.21 calls ``register()`` through ``load_plugins()`` in the launching process and in
every scheduler process, and, with ``patches/0001-dpc-load-plugins.patch``, in the DP-controller
process (not in the detokenizer). It must stay cheap and idempotent.

Every hook is listed, with its signature check, in ``hooks.py``; the planner glue is in
``dpc.py`` (DP controller) and ``notices.py`` (tokenizer manager), placements and the data path
on the schedulers in ``datapath.py`` (attention in ``backend.py``), what clients see in
``observe.py`` and ``metrics.py``.

Not hooks, set up by ``register()`` with them: the ClassVar
``SchedulerOutputStreamer.has_additional_customized_info`` (output_streamer.py:52, the opt-in of
the ``observe`` hook on ``build_additional_customized_info``, ``observe.enable_output_info``),
and the check that the installed SGLang has patches/0002's ``LoadSnapshot.dcp``
(``observe.require_load_snapshot_section``).
"""

from __future__ import annotations

import logging

from sglang_dcp.sglang.options import DcpOptions

logger = logging.getLogger(__name__)

_REGISTERED = False

# SGLang 0.5.21, srt/managers/data_parallel_controller.py: the DP controller's constructor, which
# launches the schedulers and ends ready to dispatch. The DCP planner will attach here.
DPC_INIT = "sglang.srt.managers.data_parallel_controller.DataParallelController.__init__"
DPC_READY_MESSAGE = "sglang_dcp: plugin hooks are active in the DP controller"


def _on_dp_controller_ready(result, controller, *args, **kwargs) -> None:
    """AFTER hook on ``DataParallelController.__init__``: log, then attach the planner.

    The log line is the proof that plugin hooks reach the DP controller (they do not on stock
    0.5.21, which never calls ``load_plugins()`` there); tests and operators look for
    ``DPC_READY_MESSAGE``. With the launcher's ``--dcp-policy`` not ``off`` the planner then
    takes over dispatching (``dpc.attach``).
    """
    logger.info("%s (%s DP ranks)", DPC_READY_MESSAGE, getattr(controller, "launch_dp_size", "?"))
    options = DcpOptions.from_env()
    if options.enabled:
        from sglang_dcp.sglang import dpc

        dpc.attach(controller, options)


def register() -> None:
    """Apply sglang-dcp's hooks to SGLang in this process."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    from sglang_dcp.sglang import cpu_compat, fast_start, quiet

    quiet.install()
    fast_start.enable_in_child()

    cpu_compat.install()
    fixes = cpu_compat.apply_sglang_fixes()
    if fixes:
        logger.info("sglang_dcp: applied CPU fixes: %s", ", ".join(fixes))

    from sglang_dcp.sglang import hooks

    # load_plugins() applies registered hooks right after the plugins ran (importing the
    # target's module: free in every process that launches or is a scheduler, which already
    # imported it or its heavier dependency srt/managers/scheduler.py).
    from sglang_dcp.sglang import backend

    backend.register()  # the --attention-backend choice must parse before the options are known
    options = DcpOptions.from_env()
    if options.enabled:
        from sglang_dcp.sglang import observe
        from sglang_dcp.sglang.messages import register_types

        register_types()
        observe.require_load_snapshot_section()
        observe.enable_output_info()
    hooks.install(options.enabled, sharding=options.sharding)
