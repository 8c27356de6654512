"""On a machine without CUDA, SGLang's processes start from a fork server that imported SGLang
once, instead of each importing it again.

SGLang 0.5.21 starts its processes with ``spawn`` (``engine._set_envs_and_config``): every
scheduler, the DP controller and the detokenizer import torch, transformers and SGLang from
scratch, about 20 s of CPU each. With 4 DP ranks that is seven imports on the 2 cores of a CPU
test machine, most of a server's minute-long start. Here the ``forkserver`` start method with
``PRELOAD`` takes its place: the launching process's fork server imports the modules once and
forks the DP controller, the detokenizer and, asked by the DP controller (``enable_in_child``),
the schedulers from that state. A forked child still runs ``multiprocessing``'s spawn
preparation (``sys.path``, ``sys.argv``, the main module), unpickles its target and runs it as
under ``spawn``. Its environment is the launcher's at the first process start (after SGLang set
its variables, ``_set_envs_and_config``): unlike ``spawn``, a variable the launcher set between
two starts would not reach the later child. SIGQUIT, SGLang's way for a child to report a
failure to its parent, is passed on to the launcher (``forward_sigquit``).

Only without CUDA: the fork server imports SGLang, and SGLang's import may initialize the CUDA
driver, after which a forked child cannot use the GPU. On a GPU SGLang's ``spawn`` stays, so
the start method is the only thing here that differs between a CPU run and a GPU one.
``SGLANG_DCP_START_METHOD=spawn`` keeps ``spawn`` on a CPU too.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys

ENV_VAR = "SGLANG_DCP_START_METHOD"
# What a scheduler, the DP controller and the detokenizer import: their targets' modules, the
# model registry (every model class: 4-5 s per scheduler otherwise) and this plugin's glue.
PRELOAD = [
    "sglang_dcp.sglang.preload",  # first: quiets the model registry (quiet.install)
    "sglang.srt.managers.scheduler",
    "sglang.srt.managers.data_parallel_controller",
    "sglang.srt.managers.detokenizer_manager",
    "sglang.srt.model_executor.model_runner",
    "sglang.srt.models.registry",
    "sglang_dcp.sglang.plugin",
    "sglang_dcp.sglang.dpc",
    "sglang_dcp.sglang.datapath",
    "sglang_dcp.sglang.backend",
]
_ENGINE = "sglang.srt.entrypoints.engine"


def wanted(cuda: bool) -> bool:
    """Fork-server starts on this machine: no CUDA, and not turned off by ``ENV_VAR``."""
    method = os.environ.get(ENV_VAR, "forkserver")
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"{ENV_VAR}={method!r}: use forkserver or spawn")
    return not cuda and method == "forkserver"


def use_forkserver() -> None:
    """Make ``forkserver`` (with ``PRELOAD``) this process's start method."""
    multiprocessing.set_start_method("forkserver", force=True)
    multiprocessing.set_forkserver_preload(PRELOAD)


def forward_sigquit() -> None:
    """In the fork server (``preload.py``): pass SIGQUIT on to the launcher, its parent.

    A scheduler, the DP controller or the detokenizer that fails sends SIGQUIT to its parent
    (``psutil.Process().parent()``, SGLang 0.5.21 scheduler.py:6093,
    data_parallel_controller.py:861, detokenizer_manager.py:561). Under ``spawn`` that is the
    launcher, or the DP controller, whose death the launcher's watchdog then sees; here it is
    the fork server, which SIGQUIT would end silently and leave the server hanging. The
    launcher's handler takes the whole server down, as SGLang does. Forked children get the
    default action back."""
    launcher = os.getppid()

    def forward(signum, frame) -> None:
        print(f"[sglang-dcp] a process forked by the fork server reported a failure (SIGQUIT); "
              f"passing it on to the launcher (pid {launcher})", file=sys.stderr, flush=True)
        os.kill(launcher, signal.SIGQUIT)

    signal.signal(signal.SIGQUIT, forward)
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGQUIT, signal.SIG_DFL))


def enable_in_launcher(cuda: bool) -> None:
    """In the launching process, before ``run_server``: SGLang forces ``spawn`` when the engine
    launches (``_set_envs_and_config``); switch to the fork server right after it."""
    if not wanted(cuda):
        return
    import importlib

    engine = importlib.import_module(_ENGINE)
    forced = engine._set_envs_and_config
    if getattr(forced, "_sglang_dcp_forkserver", False):
        return

    def set_envs_then_forkserver(*args, **kwargs):
        out = forced(*args, **kwargs)
        use_forkserver()
        return out

    set_envs_then_forkserver._sglang_dcp_forkserver = True
    engine._set_envs_and_config = set_envs_then_forkserver


def enable_in_child() -> None:
    """In a process SGLang started (``plugin.register``), whose start method came from the
    launcher's preparation data. Forked by the launcher's fork server, it asks that server for
    its own children too (the DP controller's schedulers): Python 3.11 hands a forked child the
    server's address and its "alive" pipe but not its pid, so ``ensure_running`` would start a
    second server, which would import ``PRELOAD`` again (~20 s). Otherwise its own server gets
    the same preload."""
    if multiprocessing.get_start_method(allow_none=True) != "forkserver":
        return
    from multiprocessing import forkserver, resource_tracker

    server = forkserver._forkserver
    inherited = (getattr(server, "_forkserver_address", None) is not None
                 and getattr(server, "_forkserver_alive_fd", None) is not None
                 and getattr(server, "_forkserver_pid", 0) is None)  # fmt: skip
    if inherited:
        server.ensure_running = resource_tracker.ensure_running
    else:
        multiprocessing.set_forkserver_preload(PRELOAD)
