"""Spawn ``world_size`` local ranks with a gloo (or NCCL) process group, with a hard timeout.

The target must be a module-level function of an importable module (``spawn`` pickles it by
name): ``fn(rank, world_size, init_method, backend, *args)``; call ``init_rank`` first thing.

Without CUDA the ranks fork from a fork server that imported the first run's target module and
``RANK_PRELOAD`` once and is reused by every later run in this process (``start_method``): a
rank that imports SGLang's pools costs ~12 s of CPU otherwise, three or four of them per run on
a 2-core test machine. A forked rank gets the server's environment, which is this process's at
the first run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


# What this project's rank targets import besides their own modules: SGLang's KV pools and
# allocators (the self-checks' ``--pool sglang``, the move and piece workers). Only names: the
# fork server imports them (skipping one that is not installed), this module does not.
RANK_PRELOAD = (
    "sglang.srt.mem_cache.memory_pool",
    "sglang.srt.mem_cache.allocator.token",
    "sglang.srt.mem_cache.allocator.paged",
)


def init_rank(
    rank: int,
    world_size: int,
    init_method: str,
    backend: str = "gloo",
    *,
    device: str = "cpu",
    timeout_s: float = 120,
) -> dist.ProcessGroup:
    """Join the group; one intra-op thread per rank (ranks share few cores). Returns the group.
    With NCCL, or ``device="cuda"``, rank r uses GPU ``r % device_count`` (gloo ranks may share
    one)."""
    torch.set_num_threads(1)
    if backend == "nccl" or device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return dist.group.WORLD


def _rank_main(rank: int, fn, *args) -> None:
    """Run ``fn`` on this rank, leave the process group, then end the process without
    interpreter finalization. A gloo group torn down at interpreter exit aborted a rank now and
    then ("terminate called without an active exception", SIGABRT: once in six runs of
    test_transfer before the explicit destroy, and once in a full CI run of test_backend_graph
    after it, with no Python exception on any rank): gloo's C++ threads can still own tensors
    whose release needs the GIL while finalization tears the interpreter down (pytorch#179291).
    ``os._exit`` skips that teardown once everything is done; the faulthandler names the
    Python frame of any native abort that still happens while ``fn`` runs."""
    import faulthandler
    import sys

    faulthandler.enable(sys.stderr, all_threads=True)
    fn(rank, *args)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def start_method() -> str:
    """``spawn`` with CUDA (a fork server's imports may initialize the driver, after which a
    forked rank cannot use the GPU), ``forkserver`` without."""
    return "spawn" if torch.cuda.is_available() else "forkserver"


def run_ranks(fn, world_size: int, *args, backend: str = "gloo", timeout_s: float = 300) -> None:
    """Run ``fn`` on ``world_size`` fresh processes; raise if any fails or the deadline passes
    (every child is killed then, so nothing is left behind)."""
    # A file store in a fresh folder, not a TCP port: a port picked free here can be taken by
    # another process before rank 0 binds it, which fails the run at random.
    store_dir = tempfile.mkdtemp(prefix="sglang-dcp-store-")
    init_method = f"file://{os.path.join(store_dir, 'store')}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    method = start_method()
    if method == "forkserver":  # takes effect when the server starts: at the first run
        mp.set_forkserver_preload(["torch.distributed", fn.__module__, *RANK_PRELOAD])
    ctx = mp.start_processes(
        _rank_main,
        args=(fn, world_size, init_method, backend, *args),
        nprocs=world_size,
        join=False,
        start_method=method,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world_size} ranks did not finish within {timeout_s:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)
        shutil.rmtree(store_dir, ignore_errors=True)
