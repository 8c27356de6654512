"""End-to-end check of the exchange on ``W`` local gloo ranks against a single-process reference.

    python -m sglang_dcp.exchange.selfcheck --world-size 3 --steps 8 --seed 0

Each rank runs a small random multi-layer attention stack (q/k/v projections, new K/V appended
to the tail at home, attention through the exchange, residual output projection) over a random
scenario (``scenario.py``): prompts are prefilled at home and their sealed shards shipped with
``transfer_shards``; requests finish and arrive; one sealed shard migrates mid-run. The parent
replays the same stack in float64 over the unsharded KV and compares every step's attention
output of every request and layer. Prints ``max_rel_err=<value>`` last; exit 0 iff <= 1e-5.
``--mla``: SGLang's absorbed MLA shapes (one latent KV head, V a view of its first columns,
latent partials merged; ``toy_stack.py``).
"""

from __future__ import annotations

import argparse
import math
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
from sglang_dcp.exchange.exchange import default_kernels
from sglang_dcp.exchange.route import max_pair_items, tokens_on
from sglang_dcp.exchange.scenario import make_scenario
from sglang_dcp.exchange.spawn import init_rank, run_ranks
from sglang_dcp.exchange.toy_stack import (
    CheckConfig,
    ToyStack,
    Weights,
    make_pool,
    reference_errors,
)
from sglang_dcp.exchange.transfer import ShardMove, transfer_shards
from sglang_dcp.runner.graph import DecodeRunner, capture_buckets

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
    W = cfg.world_size
    steps = make_scenario(W, cfg.steps, cfg.seed, page_size=cfg.page_size, max_pages=cfg.max_pages)
    if cfg.device == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device(cfg.device)
    w = Weights(cfg).to(dev)
    def pages(p) -> int:
        return -(-p.shards[-1].end // cfg.page_size) + len(p.shards)

    # room for every request ever held at once on one rank (prefill at home, then decode)
    most = sum(pages(p) for p in steps[-1].placements)
    most += sum(pages(p) for s in steps for p in s.arrivals)
    pool = make_pool(cfg, most + cfg.steps + 2, dev)
    max_batch = max(sum(p.home_rank == r for p in s.placements) for s in steps for r in range(W))
    max_pair = max(max_pair_items(s.placements, W) for s in steps)
    runner = DecodeRunner(
        comm=comm,
        pool=pool,
        model=ToyStack(w, pool),
        num_q_heads=cfg.num_q_heads,
        head_dim=cfg.head_dim,
        v_head_dim=cfg.v_head_dim,
        sm_scale=1 / math.sqrt(cfg.head_dim),
        buckets=capture_buckets(max(1, max_batch), cfg.capacity or max(1, max_pair)),
        kernels=default_kernels(cfg.impl),
        check_headers=True,
        use_cuda_graph=cfg.cuda_graph,
    )
    if cfg.cuda_graph:
        runner.capture()
    results: dict[tuple[int, str], torch.Tensor] = {}
    stats = {"max_rounds": 0, "moves": 0, "guest_items": 0}
    ptrs = None
    for st in steps:
        for rid in st.finishes:
            pool.free_request(rid)
        moves = []
        for p in st.arrivals:  # prefill at home, then ship the sealed shards
            n = p.shards[-1].end
            if p.home_rank == rank:
                pool.allocate((p.rid, 0), n)
                slots = pool.slot_tensor((p.rid, 0))
                for l in range(cfg.num_layers):
                    k, v = w.prompt_kv(p.rid, l, n)
                    pool.k[l, slots], pool.v[l, slots] = k.to(dev), v.to(dev)
                for s in p.shards[1:]:
                    if s.start < n:
                        pool.split(pool.key_at(p.rid, s.start), s.start)
                if p.shards[-1].start == n and n > 0:
                    pool.allocate((p.rid, n), 0)
            moves += [
                ShardMove(p.rid, p.home_rank, s.rank, s.start, s.end)
                for s in p.shards[:-1]
                if s.rank != p.home_rank
            ]
        migrations = list(st.migrations)
        stats["moves"] += len(moves) + len(migrations)
        for batch in (moves, migrations):  # a migration may move a shard shipped just now
            for r in transfer_shards(comm, pool, batch):
                if not r.ok:
                    raise RuntimeError(f"step {st.t}: transfer {r.move} failed: {r.reason}")
        homes = [p for p in st.placements if p.home_rank == rank]
        loc = [pool.extend((p.rid, p.shards[-1].start), 1)[0] for p in homes]
        x = torch.stack([w.x0(p.rid, st.t) for p in homes]) if homes else torch.zeros(0, cfg.hidden)
        loc_t = torch.tensor(loc, dtype=torch.long)
        io = runner.step(st.placements, {"x": x.to(dev), "loc": loc_t.to(dev)})
        bufs = runner.buffers[runner.last_bucket]
        if ptrs is not None and runner.last_bucket == ptrs[0] and bufs.data_ptrs() != ptrs[1]:
            raise RuntimeError(f"step {st.t}: static buffers moved")
        ptrs = (runner.last_bucket, bufs.data_ptrs())
        stats["max_rounds"] = max(stats["max_rounds"], runner.last_rounds)
        stats["guest_items"] += sum(
            1 for p in st.placements if p.home_rank != rank and tokens_on(p, rank) > 0
        )
        for i, p in enumerate(homes):
            results[(st.t, p.rid)] = io["attn"][i].to("cpu", copy=True)
    torch.save({"results": results, "stats": stats}, os.path.join(out, f"rank{rank}.pt"))
    comm.barrier()


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
        "--cuda-graph", action="store_true", help="capture/replay per bucket (with --backend nccl)"
    )
    ap.add_argument(
        "--mla", action="store_true",
        help="MLA shapes (DeepSeek-V3's absorbed path at the tiny model's size: q [H, 48], one "
        "latent KV head [48] whose first 32 columns are V, latent outputs [H, 32])",
    )  # fmt: skip
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
    make = CheckConfig.for_mla if a.mla else CheckConfig
    cfg = make(
        a.world_size, a.steps, a.seed, num_layers=a.layers, capacity=a.capacity, impl=a.impl,
        device=device, cuda_graph=a.cuda_graph, backend=a.backend,
    )
    results, stats = collect_results(cfg, timeout_s=a.timeout)
    err, where = reference_errors(cfg, results)
    print(
        f"world_size={cfg.world_size} steps={cfg.steps} seed={cfg.seed} layers={cfg.num_layers} "
        f"{'mla ' if cfg.mla else ''}"
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
