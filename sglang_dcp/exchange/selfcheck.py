"""End-to-end check of the server's exchange runtime on ``W`` local gloo ranks against a
single-process float64 reference.

    python -m sglang_dcp.exchange.selfcheck --pool sglang [--attention mha|mla] [--paged] \
        --world-size 3 --steps 8 --seed 0

Each rank runs what a DCP server runs, minus the scheduler (``sglang/selfcheck_rank.py``):
SGLang's own KV pool, allocator and ``req_to_token`` pool; prompts prefilled at home and their
sealed shards shipped with the server's ``shipping.ship`` (adapter, ``transfer_shards``, reserved
staging); every step's route built by ``step_build.build_step`` and run through one
``StaticExchange`` per rank, layer by layer, as the attention backend calls it. Over it, a small
random multi-layer attention stack (``toy_stack.py``: q/k/v projections, new K/V appended at
home, residual output projection) and a random scenario (``scenario.py``: arrivals, finishes,
one sealed-shard migration mid-run). The parent replays the stack in float64 over the unsharded
KV and compares every step's attention output of every request and layer. Prints
``max_rel_err=<value>`` last; exit 0 iff <= 1e-5. ``--attention mla``: SGLang's
``MLATokenToKVPool`` and absorbed MLA shapes (one latent KV head, V its first columns).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from dataclasses import asdict

import torch

from sglang_dcp.exchange.comm import (
    Communicator,
    HostStagedCommunicator,
    TorchDistCommunicator,
)
from sglang_dcp.exchange.spawn import init_rank, run_ranks
from sglang_dcp.exchange.toy_stack import CheckConfig, Weights, reference_errors  # noqa: F401

TOLERANCE = 1e-5


def _worker(rank: int, world_size: int, init_method: str, backend: str, cfg_d: dict, out: str):
    run_worker(rank, world_size, init_method, backend, CheckConfig(**cfg_d), out, run_rank)


def run_worker(rank, world_size, init_method, backend, cfg, out: str, run) -> None:
    """A self-check rank: its communicator (host-staged for gloo ranks sharing a GPU), then
    ``run(rank, cfg, comm, out)``; a failure's traceback goes to ``out/error<rank>.txt``."""
    try:
        group = init_rank(rank, world_size, init_method, backend, device=cfg.device)
        comm: Communicator = TorchDistCommunicator(group)
        if cfg.device == "cuda" and backend == "gloo":
            comm = HostStagedCommunicator(comm)
        run(rank, cfg, comm, out)
    except BaseException:
        with open(os.path.join(out, f"error{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise


def run_rank(rank: int, cfg: CheckConfig, comm: Communicator, out: str) -> None:
    """One rank on the server's runtime over SGLang's pools (imports SGLang)."""
    from sglang_dcp.sglang.selfcheck_rank import run_rank as run_sglang_rank

    run_sglang_rank(rank, cfg, comm, out)


def collect_results(cfg: CheckConfig, timeout_s: float = 300) -> tuple[dict, dict]:
    """Run the ranks; ((step, rid) -> attention outputs [num_layers, num_q_heads, head_dim],
    run statistics)."""
    with tempfile.TemporaryDirectory(prefix="dcp-selfcheck-") as out:
        try:
            run_ranks(
                _worker, cfg.world_size, asdict(cfg), out, backend=cfg.backend, timeout_s=timeout_s
            )
        except Exception as e:
            errs = sorted(f for f in os.listdir(out) if f.startswith("error"))
            detail = "".join(open(os.path.join(out, f)).read() for f in errs)
            raise RuntimeError(f"selfcheck ranks failed:\n{detail or e}") from None
        results, stats = {}, {"max_rounds": 0, "moves": 0, "guest_items": 0}
        for r in range(cfg.world_size):
            got = torch.load(os.path.join(out, f"rank{r}.pt"))
            results.update(got["results"])
            stats["max_rounds"] = max(stats["max_rounds"], got["stats"]["max_rounds"])
            stats["moves"] = got["stats"]["moves"]  # every rank runs every move
            stats["guest_items"] += got["stats"]["guest_items"]
    return results, stats


def run_selfcheck(cfg: CheckConfig, timeout_s: float = 300) -> tuple[float, str]:
    """(max relative error, where it occurred) of a whole run."""
    results, _ = collect_results(cfg, timeout_s)
    return reference_errors(cfg, results)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--extend" in argv:  # prefill into shards: its own scenario and options
        from sglang_dcp.exchange.extend_check import main as extend_main

        return extend_main([a for a in argv if a != "--extend"])
    ap = argparse.ArgumentParser(
        prog="python -m sglang_dcp.exchange.selfcheck",
        description=__doc__.split("\n\n")[0]
        + " Prints max_rel_err=<value> last; exit 0 only within fp32 tolerance.",
    )
    ap.add_argument("--world-size", type=int, default=3, help="ranks to spawn (default 3)")
    ap.add_argument("--steps", type=int, default=8, help="decode steps to run (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    ap.add_argument("--layers", type=int, default=3, help="attention layers per step (default 3)")
    ap.add_argument("--capacity", type=int, default=0, help="largest per-peer capacity (0: auto)")
    ap.add_argument(
        "--impl", choices=["auto", "torch", "triton"], default="auto",
        help="attention/merge implementation (auto: Triton on CUDA, torch on CPU)",
    )  # fmt: skip
    ap.add_argument(
        "--backend", choices=["gloo", "nccl"], default="gloo",
        help="torch.distributed backend (nccl: one GPU per rank)",
    )  # fmt: skip
    ap.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto",
        help="where KV, buffers and kernels live (auto: cuda with nccl, else cpu); cuda with "
        "gloo lets several ranks share one GPU, the all-to-alls going through host copies",
    )  # fmt: skip
    ap.add_argument(
        "--cuda-graph", action="store_true",
        help="capture each layer's one-round exchange in a CUDA graph and replay it, as the "
        "server's decode graphs do (with --backend nccl)",
    )
    ap.add_argument(
        "--pool", choices=["sglang"], default="sglang",
        help="KV pools and allocators: SGLang's own (the only kind; the server's runtime)",
    )  # fmt: skip
    ap.add_argument(
        "--attention", choices=["mha", "mla"], default="mha",
        help="mha: MHATokenToKVPool, GQA shapes; mla: MLATokenToKVPool, DeepSeek-V3's absorbed "
        "path at the tiny model's size (q [H, 48], one latent KV head [48] whose first 32 "
        "columns are V, latent outputs [H, 32])",
    )  # fmt: skip
    ap.add_argument("--mla", action="store_true", help="the same as --attention mla")
    ap.add_argument(
        "--paged", action="store_true",
        help="SGLang's paged allocator (page 4, the scenario's page) instead of one token a page",
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds before the ranks are killed")
    ap.add_argument("--extend", action="store_true",
                    help="check the extend-mode exchange instead (prefill into shards; see "
                    "'--extend --help')")
    a = ap.parse_args(argv)
    device = a.device if a.device != "auto" else ("cuda" if a.backend == "nccl" else "cpu")
    if a.backend == "nccl" and device != "cuda":
        ap.error("--backend nccl needs --device cuda")
    if a.cuda_graph and a.backend != "nccl":
        ap.error("--cuda-graph needs --backend nccl (a graph cannot capture gloo's host copies)")
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda (or --backend nccl): no CUDA device is visible")
    mla = a.mla or a.attention == "mla"
    make = CheckConfig.for_mla if mla else CheckConfig
    cfg = make(
        a.world_size, a.steps, a.seed, num_layers=a.layers, capacity=a.capacity, impl=a.impl,
        device=device, backend=a.backend, paged=a.paged, cuda_graph=a.cuda_graph,
    )
    results, stats = collect_results(cfg, timeout_s=a.timeout)
    err, where = reference_errors(cfg, results)
    print(
        f"world_size={cfg.world_size} steps={cfg.steps} seed={cfg.seed} layers={cfg.num_layers} "
        f"pool=sglang attention={'mla' if cfg.mla else 'mha'} paged={int(cfg.paged)} "
        f"outputs={len(results)} guest_items={stats['guest_items']} "
        f"shard_moves={stats['moves']} max_rounds={stats['max_rounds']}"
    )
    ok = err <= TOLERANCE
    if not ok:
        print(f"FAILED: relative error {err:.3e} > {TOLERANCE:g} at {where}", file=sys.stderr)
    print(f"max_rel_err={err:.3e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
