"""Per-layer cost of the attention exchange against local-only attention.

    python bench/exchange.py                       # gloo on CPU -> results/exchange-gloo-cpu.*
    python bench/exchange.py --backend nccl --world-sizes 2 4 8   # one process per GPU

Workload per rank: ``--batch`` degree-1 requests of ``--kv-len`` tokens, plus ``G`` requests
(``--guest-items``) homed here whose KV is split in two page-aligned halves, the first on the next
rank (a sealed shard), the tail at home. So each rank sends ``G`` queries, serves ``G`` guest
items, and merges ``G`` pairs of partials. Phases of one layer, timed on every rank (the slowest
rank is reported per phase, as it sets the step time):

    pack+a2a q  gather queries into the per-peer buffer, all_to_all_single, unpack into items
    attention   one decode_attention launch over local + guest items
    a2a out     pack guest (o, lse), all_to_all_single back
    merge       gather parts, merge_attention_states

Local-only baseline: the same requests with all KV on the home rank, one attention launch, no
exchange. Fixed seed, warmup, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("pack_a2a_q", "attention", "a2a_out", "merge")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _worker(rank, world_size, init_method, backend, a: dict, out: str) -> None:
    from sglang_dcp.exchange.buffers import ExchangeShape
    from sglang_dcp.exchange.comm import TorchDistCommunicator
    from sglang_dcp.exchange.exchange import (
        attend_items,
        default_kernels,
        merge_outputs,
        send_outputs,
        send_queries,
    )
    from sglang_dcp.exchange.route import build_rank_route
    from sglang_dcp.exchange.spawn import init_rank
    from sglang_dcp.exchange.static import StaticExchange
    from sglang_dcp.types import Placement, Shard

    comm = TorchDistCommunicator(init_rank(rank, world_size, init_method, backend))
    dev = torch.device("cpu")
    if backend == "nccl":
        dev = torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, a["dtype"])
    W, B, G, n, page = world_size, a["batch"], a["guest"], a["kv_len"], a["page"]
    Hq, Hkv, D = a["q_heads"], a["kv_heads"], a["head_dim"]
    attention, merge = default_kernels(a["impl"])
    torch.manual_seed(1234 + rank)

    def placements(local_only: bool):
        ps = []
        for h in range(W):
            ps += [Placement(f"b{h}.{i}", h, (Shard(h, 0, n),)) for i in range(B)]
            half = n // 2 // page * page
            for i in range(G):
                peer = h if local_only else (h + 1) % W
                ps.append(Placement(f"g{h}.{i}", h, (Shard(peer, 0, half), Shard(h, half, n))))
        return ps

    rows = []
    for local_only in (True, False):
        ps = placements(local_only)
        pages = (B + 2 * G) * (n // page + 2) + 2
        slot_map, used = {}, 1  # slot 0 is the padding slot, as in SGLang's pools
        for p in ps:
            n = sum(s.num_tokens for s in p.shards if s.rank == rank)
            if n:
                slot_map[p.rid] = list(range(used, used + n))
                used += -(-n // page) * page  # whole pages, as an allocator hands them out
        k_buf = torch.randn(used, Hkv, D, dtype=dtype, device=dev)
        v_buf = torch.randn(used, Hkv, D, dtype=dtype, device=dev)
        route = build_rank_route(ps, rank=rank, num_ranks=W, local_slots=slot_map)
        shape = ExchangeShape(num_ranks=W, max_local=route.batch_size, capacity=max(1, G),
                              num_q_heads=Hq, head_dim=D, v_head_dim=D,
                              max_kv_slots=used, dtype=dtype)
        ex = StaticExchange(shape, dev, num_row_keys=route.batch_size + 1)
        ex.load(route, rounds=1, tag=0, row_keys=range(route.batch_size))
        bufs = ex.bufs
        bufs.q_in.normal_()
        kw = dict(sm_scale=D**-0.5, attention=attention)
        times = {k: [] for k in PHASES + ("total",)}
        for it in range(a["warmup"] + a["iters"]):
            comm.barrier()
            _sync(dev)
            t0 = time.perf_counter()
            if local_only:  # no exchange at all: one launch over the home rows
                indptr = bufs.kv_indptr[: shape.max_local + 1]
                o, _ = attention(bufs.q_in, k_buf, v_buf, indptr, bufs.kv_indices, D**-0.5)
                _sync(dev)
                t = [0.0, time.perf_counter() - t0, 0.0, 0.0]
            else:
                send_queries(bufs, comm)
                _sync(dev)
                t1 = time.perf_counter()
                o, lse = attend_items(bufs, k_buf, v_buf, **kw)
                _sync(dev)
                t2 = time.perf_counter()
                send_outputs(bufs, comm, o, lse)
                _sync(dev)
                t3 = time.perf_counter()
                merge_outputs(bufs, o, lse, merge)
                _sync(dev)
                t = [t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3]
            if it >= a["warmup"]:
                for k, v in zip(PHASES, t):
                    times[k].append(v)
                times["total"].append(sum(t))
        med = [sorted(v)[len(v) // 2] * 1e6 for v in times.values()]
        med = torch.tensor(med, dtype=torch.float64, device=dev)
        allmed = torch.zeros(W * med.numel(), dtype=torch.float64, device=dev)
        comm.all_gather(allmed, med)
        worst = allmed.view(W, -1).max(0).values.cpu().tolist()  # the slowest rank per phase
        rows.append({"mode": "local" if local_only else "exchange", **dict(zip(times, worst)),
                     "items_per_rank": route.batch_size + route.num_guest_items})
    if rank == 0:
        with open(os.path.join(out, "rows.json"), "w") as f:
            json.dump(rows, f)
    comm.barrier()


def _hardware(backend: str) -> str:
    if backend == "nccl" and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        wanted = ("Model name", "CPU(s)", "Thread(s) per core")
        keep = [l for l in out.splitlines() if l.split(":")[0] in wanted]
        return "; ".join(" ".join(l.split()) for l in keep) or platform.processor()
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"


def _commit() -> str:
    try:
        cmd = ["git", "rev-parse", "HEAD"]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else "unknown (git rev-parse HEAD failed)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    ap.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--guest-items", type=int, nargs="+", default=[0, 4, 16])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kv-len", type=int, default=256)
    ap.add_argument("--page", type=int, default=16)
    ap.add_argument("--q-heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default=None, help="default: float32 on gloo, bfloat16 on nccl")
    ap.add_argument("--impl", choices=["auto", "torch", "triton"], default=None,
                    help="kernels (default: torch on gloo, auto on nccl)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="results path without suffix")
    a = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from sglang_dcp.exchange.spawn import run_ranks

    gpu = a.backend == "nccl"
    settings = dict(
        batch=a.batch, kv_len=a.kv_len, page=a.page, q_heads=a.q_heads, kv_heads=a.kv_heads,
        head_dim=a.head_dim, dtype=a.dtype or ("bfloat16" if gpu else "float32"),
        impl=a.impl or ("auto" if gpu else "torch"), iters=a.iters, warmup=a.warmup,
    )
    results = []
    print(" ".join(f"{h:>{w}}" for h, _, w in COLUMNS) + "   (us per layer, slowest rank, median)")
    for W in a.world_sizes:
        for G in a.guest_items:
            with tempfile.TemporaryDirectory() as out:
                args = ({**settings, "guest": G}, out)
                run_ranks(_worker, W, *args, backend=a.backend, timeout_s=600)
                local, ex = json.load(open(os.path.join(out, "rows.json")))
            row = {"world_size": W, "guest_items": G, "items_per_rank": ex["items_per_rank"]}
            row.update({f"{k}_us": round(ex[k], 1) for k in PHASES + ("total",)})
            row["local_only_us"] = round(local["total"], 1)
            row["ratio"] = round(ex["total"] / local["total"], 3)
            results.append(row)
            print(" ".join(f"{_fmt(row[k]):>{w}}" for _, k, w in COLUMNS))

    tag = f"exchange-{a.backend}-{'gpu' if gpu else 'cpu'}"
    path = a.out or os.path.join(ROOT, "bench", "results", tag)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    args = argv if argv is not None else sys.argv[1:]
    meta = {
        "command": " ".join(["python", "bench/exchange.py", *args]),
        "commit": _commit(),
        "hardware": _hardware(a.backend),
        "torch": torch.__version__,
        "backend": a.backend,
        "settings": settings,
        "results": results,
    }
    with open(path + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    with open(path + ".md", "w") as f:
        f.write(MD_HEAD.format(**{**meta, "settings": json.dumps(settings)}))
        f.write("| " + " | ".join(h for h, _, _ in COLUMNS) + " |\n")
        f.write("|" + "---|" * len(COLUMNS) + "\n")
        for r in results:
            f.write("| " + " | ".join(_fmt(r[k]) for _, k, _ in COLUMNS) + " |\n")
    print(f"exchange bench: {len(results)} configs -> {path}.json")
    return 0


# (header, result key, console width)
COLUMNS = (
    ("W", "world_size", 3),
    ("guest", "guest_items", 5),
    ("items", "items_per_rank", 5),
    ("pack+a2a q", "pack_a2a_q_us", 10),
    ("attention", "attention_us", 9),
    ("a2a out", "a2a_out_us", 8),
    ("merge", "merge_us", 7),
    ("total", "total_us", 8),
    ("local", "local_only_us", 8),
    ("x local", "ratio", 7),
)

MD_HEAD = """# Exchange cost per layer ({backend})

`{command}`

- commit: {commit}
- hardware: {hardware}
- torch {torch}
- settings: {settings}

Microseconds per layer, median over iterations, the slowest rank per phase (so the phases need not
add up to `total`, the slowest rank's own total: a rank that reaches an all-to-all first waits
there for its peers). `items`: attention
items per rank (its batch, the guest requests it homes, and the guest items it serves). `local`:
the same requests with all KV at home, one attention launch and no exchange. `x local`: total
over local.

"""


def _fmt(v) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


if __name__ == "__main__":
    sys.exit(main())
