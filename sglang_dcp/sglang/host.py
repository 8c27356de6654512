"""The process around SGLang, for the launcher (``launch.py``): SGLang's CPU engine settings on a
machine without CUDA, the "server ready" banner, and the subreaper that keeps orphaned
schedulers in the launcher's process tree."""

from __future__ import annotations

import os
import sys
import time
import urllib.request


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


CPU_MEMORY_SHARE = 0.5  # of the machine's memory, for all ranks' weights + KV, by default


def prepare_cpu_environment(sglang_argv: list[str], tp_size: int) -> list[str]:
    """On a machine without CUDA, default to SGLang's CPU engine with CPU-safe settings (no
    graphs, a memory fraction for all ranks together), announced in one line. Returns the new
    argv."""
    import torch

    if torch.cuda.is_available():
        return sglang_argv
    names = {a.split("=", 1)[0] for a in sglang_argv}
    added = []
    if "--device" not in names:
        added += ["--device", "cpu"]
    if "--disable-cuda-graph" not in names:
        # SGLang captures a prefill graph even on CPU and fails ("... 'CPU' backend")
        added.append("--disable-cuda-graph")
    if not names & {"--mem-fraction-static", "--max-total-tokens"}:
        # SGLang sizes each rank's weights + KV as a fraction of the machine's memory, every
        # rank as if alone (its default leaves ~20 GB of KV on a 23 GB machine): together the
        # ranks take at most CPU_MEMORY_SHARE of it.
        added += ["--mem-fraction-static", f"{CPU_MEMORY_SHARE / max(1, tp_size):.3g}"]
    if added:
        print(f"[sglang-dcp] no CUDA device: {' '.join(added)} (pass them to override)",
              flush=True)  # fmt: skip
    sglang_argv = added + sglang_argv
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    # SGLang's CPU engine binds each TP rank's OpenMP threads to cores and asserts that there
    # are enough NUMA nodes unless this is set; one core per rank, cycling over the cores.
    ncpu = os.cpu_count() or 1
    os.environ.setdefault(
        "SGLANG_CPU_OMP_THREADS_BIND", "|".join(str(r % ncpu) for r in range(tp_size))
    )
    if tp_size > ncpu:
        # More ranks than cores: an OpenMP thread spinning after its parallel region takes the
        # core a peer rank needs to reach the next collective, so every collective waits.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return sglang_argv


def _announce_when_ready(host: str, port: int, demo: bool) -> None:
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        time.sleep(1)
    else:
        return
    lines = [f"[sglang-dcp] server ready at {url}"]
    if demo:
        lines += [
            "[sglang-dcp] try:",
            f"  curl -s {url}/generate -H 'Content-Type: application/json' \\",
            "    -d '{\"text\": \"The quick brown fox\", "
            "\"sampling_params\": {\"max_new_tokens\": 16, \"temperature\": 0}}'",
            f"  curl -s {url}/v1/loads",
            "[sglang-dcp] long prompts are spread over several ranks; see where their KV goes:",
            f"  python -m sglang_dcp.demo_client --url {url} --lengths 40 900 3000",
        ]
    print("\n".join(lines), flush=True)


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    When a scheduler dies, SGLang's DP controller signals the launcher and exits; its surviving
    schedulers would be re-parented to init and escape the launcher's ``kill_process_tree``
    (found by ``test_server_dcp.py::test_a_dead_scheduler_takes_the_server_down``). As a
    subreaper the launcher inherits them instead, so SGLang's SIGQUIT handler kills them too.
    Returns whether it took effect (not on non-Linux systems)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
