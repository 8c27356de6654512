"""Time to first token of a long prompt: prefill into shards against the home-only path (CPU).

One 4-rank CPU server (tiny random-weight Qwen3-MoE, ``--dp-size 4 --enable-dp-attention``,
float32) per configuration, all with the same planner (``--dcp-kv-capacity`` forces a split:
each prompt goes over 2-4 ranks) and a KV pool that can hold the whole prompt at one rank, so
every configuration can serve it:

- ``shards``: SGLang's chunked prefill (``--chunked-prefill-size``, per rank that over
  ``--dp-size``); each chunk's pieces leave the home right after its forward and later chunks
  attend to them through the exchange (issue 18);
- ``home-only``: no chunking (``--chunked-prefill-size -1``): the home prefills the prompt whole,
  then its sealed shards move (the path before issue 18; the home's pool must hold the prompt);
- ``chunked, no DCP``: the same chunks on SGLang's round-robin dispatch (nothing split, no
  exchange): what the chunking alone costs.

TTFT = latency of a ``max_new_tokens=1`` request (greedy), median over ``--reps`` runs after one
warm-up, with idle ranks spinning (no ``--sleep-on-idle``, whose once-a-second wake added up to
1 s to a sample: ``testing.server.tiny_dp_args``); ``ranks holding its KV`` = ``meta_info["dcp"]["degree"]`` (1 without the planner).
``KV read per layer``: for ``shards``, the KV tokens the tile exchange's kernels read per layer
over the whole prefill, summed over ranks (``/v1/loads`` ``prefill_kv_reads_*``, per request):
as run (each span once per row tile, ``extend_tiles.TileRoute.kv_reads``), the ideal (each span
once per chunk) and what the one-item-per-row route before issue 25 read for the same chunks.
CPU numbers of a tiny model on a shared machine: they compare the paths on one machine, nothing
more. Writes bench/results/prefill-cpu.{json,md}.

Run: ``python bench/prefill.py`` (about 5 minutes on 2 shared cores: three server starts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._meta import cpu_hardware, git_commit  # noqa: E402
from sglang_dcp.sglang.launch import demo_model_path  # noqa: E402
from sglang_dcp.testing.server import ServerProcess, tiny_dp_args  # noqa: E402

RANKS = 4


def configs(chunk: int, capacity: int, pool: int) -> dict[str, list[str]]:
    common = ["--disable-radix-cache", "--max-total-tokens", str(pool)]
    planner = [*common, "--dcp-kv-capacity", str(capacity), "--dcp-min-shard-tokens", "64"]
    return {
        "shards": [*planner, "--chunked-prefill-size", str(chunk)],
        "home-only": [*planner, "--chunked-prefill-size", "-1"],
        "chunked, no DCP": [*common, "--dcp-policy", "round_robin",
                            "--chunked-prefill-size", str(chunk)],  # fmt: skip
    }


def ttft(server, ids: list[int], rid: str) -> tuple[float, int]:
    """(seconds to the first token, the number of ranks holding the request's KV)."""
    payload = {"rid": rid, "input_ids": ids,
               "sampling_params": {"max_new_tokens": 1, "temperature": 0}}  # fmt: skip
    t0 = time.perf_counter()
    out = server.post("/generate", payload, timeout=900)
    dt = time.perf_counter() - t0
    return dt, out["meta_info"].get("dcp", {}).get("degree", 1)


KV_KEYS = ("prefill_kv_reads_tiles", "prefill_kv_reads_ideal", "prefill_kv_reads_per_row")


def kv_reads(server) -> dict[str, int]:
    """Every rank's ``prefill_kv_reads_*`` counters, summed."""
    loads = server.get("/v1/loads?include=dcp")["loads"]
    return {k: sum(int(x.get("dcp", {}).get(k, 0)) for x in loads) for k in KV_KEYS}


def run(name: str, args: list[str], prompts: dict[int, list[int]], reps: int, logdir: str, *,
        tag: str = ""):  # fmt: skip
    log = os.path.join(logdir, name.replace(" ", "_").replace(",", "") + tag + ".log")
    srv = ServerProcess([*tiny_dp_args(demo_model_path(), RANKS, sleep_on_idle=False), *args],
                        log, startup_timeout=900).start()  # fmt: skip
    rows = []
    try:
        for n, ids in prompts.items():
            ttft(srv, ids, f"warm-{n}")
            before = kv_reads(srv)
            runs = [ttft(srv, ids, f"{name}-{n}-{i}") for i in range(reps)]
            after = kv_reads(srv)
            reads = {k.removeprefix("prefill_kv_reads_"): (after[k] - before[k]) // reps
                     for k in KV_KEYS}  # fmt: skip
            rows.append({"config": name, "prompt": n,
                         "ttft_ms": statistics.median(r[0] for r in runs) * 1e3,
                         "ttft_ms_all": [round(r[0] * 1e3, 1) for r in runs],
                         "degree": max(r[1] for r in runs), "kv_reads_per_layer": reads})  # fmt: skip
            print(f"{name:16s} prompt {n:5d}: TTFT {rows[-1]['ttft_ms']:8.0f} ms, "
                  f"KV on {rows[-1]['degree']} rank(s)", flush=True)
    finally:
        srv.stop()
    return rows


TARGET = 1.3  # issue 25: shards within 1.3x of home-only at every length, flat or falling


def conclusions(rows: list[dict]) -> list[str]:
    """The target's verdict, computed from the rows."""
    by = {r["prompt"]: r["vs_home_only"] for r in rows if r["config"] == "shards"}
    chunked = {r["prompt"]: r["vs_home_only"] for r in rows if r["config"] == "chunked, no DCP"}
    lens = sorted(by)
    within = [n for n in lens if by[n] <= TARGET]
    flat = all(by[b] <= by[a] * 1.05 for a, b in zip(lens, lens[1:]))
    out = [f"- shards vs home-only: {', '.join(f'{by[n]:.2f}x at {n}' for n in lens)}; within "
           f"{TARGET}x at {len(within)} of {len(lens)} lengths; ratio "
           f"{'flat or falling' if flat else 'rising'} with the prompt (5% noise allowed)"]
    if chunked:
        out.append("- the same chunks without DCP (what chunking alone costs): "
                   + ", ".join(f"{chunked[n]:.2f}x at {n}" for n in sorted(chunked)))
        own = {n: by[n] / chunked[n] for n in lens if n in chunked}
        out.append("- shards vs the same chunks without DCP (the exchange's and the moves' own "
                   "cost): " + ", ".join(f"{own[n]:.2f}x at {n}" for n in sorted(own)))
        if len(within) < len(lens):
            worst = max((n for n in lens if n in chunked), key=lambda n: chunked[n], default=None)
            if worst is not None and chunked[worst] > TARGET:
                out.append(f"- not met: the same chunks without DCP already take "
                           f"{chunked[worst]:.2f}x the home-only TTFT at {worst}, above the "
                           f"{TARGET}x target before any exchange runs")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[768, 1536, 3072])
    ap.add_argument("--chunk", type=int, default=512, help="--chunked-prefill-size (all ranks)")
    ap.add_argument("--capacity", type=int, default=512, help="--dcp-kv-capacity per rank")
    ap.add_argument("--pool", type=int, default=4096,
                    help="--max-total-tokens per rank: holds the longest prompt at one rank")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="prefill-cpu", help="result files: NAME.{json,md}")
    a = ap.parse_args()
    import random

    rng = random.Random(0)
    prompts = {n: [rng.randrange(3, 512) for _ in range(n)] for n in a.prompts}
    rows = []
    # the planner capacity per prompt: at least --capacity, and a third of the prompt (so every
    # prompt needs 3-4 of the 4 ranks' capacity); one server per (config, capacity)
    caps = {n: max(a.capacity, -(-n // 3 // 64) * 64) for n in prompts}
    with tempfile.TemporaryDirectory() as logdir:
        for cap in sorted(set(caps.values())):
            group = {n: ids for n, ids in prompts.items() if caps[n] == cap}
            for name, args in configs(a.chunk, cap, a.pool).items():
                if name == "chunked, no DCP" and cap != min(caps.values()):
                    continue  # no planner: the capacity does not matter, one server for all
                want = prompts if name == "chunked, no DCP" else group
                rows += run(f"{name}", args, want, a.reps, logdir, tag=f"cap{cap}")
    for r in rows:
        r["planner_capacity"] = caps[r["prompt"]] if r["config"] != "chunked, no DCP" else None
    rows.sort(key=lambda r: (list(configs(0, 0, 0)).index(r["config"]), r["prompt"]))
    base = {r["prompt"]: r["ttft_ms"] for r in rows if r["config"] == "home-only"}
    for r in rows:
        r["vs_home_only"] = r["ttft_ms"] / base[r["prompt"]]
    lines = ["| config | prompt | TTFT ms (median) | vs home-only | ranks holding its KV | "
             "KV read per layer: tiles / ideal / per-row route |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        kv = r["kv_reads_per_layer"]
        reads = f"{kv['tiles']} / {kv['ideal']} / {kv['per_row']}" if kv["ideal"] else "-"
        lines.append(f"| {r['config']} | {r['prompt']} | {r['ttft_ms']:.0f} | "
                     f"{r['vs_home_only']:.2f}x | {r['degree']} | {reads} |")  # fmt: skip
    print("\n".join(lines))
    verdict = conclusions(rows)
    print("\n".join(verdict))
    meta = {"hardware": cpu_hardware() + " (CPU; labelled: not a GPU measurement)",
            "python": platform.python_version(), "git_commit": git_commit(short=True),
            "command": "python " + " ".join(sys.argv), "reps": a.reps, "ranks": RANKS,
            "chunk_per_rank": a.chunk // RANKS, "planner_capacity_min": a.capacity,
            "pool_per_rank": a.pool}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = [
        "# TTFT of a long prompt: prefill into shards vs the home-only path (CPU)", "",
        f"- hardware: {meta['hardware']}; Python {meta['python']}",
        f"- git commit: {meta['git_commit']}; command: `{meta['command']}`",
        f"- {RANKS} DP ranks, tiny random-weight Qwen3-MoE (float32), planner capacity "
        f"max({a.capacity}, prompt / 3) tokens per rank (prompts split over 2-4 ranks), "
        f"SGLang pool {a.pool} "
        f"tokens per rank, chunk {a.chunk // RANKS} tokens per rank; median of {a.reps} runs "
        "after a warm-up", "",
        *lines, "",
        *verdict, "",
        "Configurations and columns: see the docstring of bench/prefill.py.",
    ]  # fmt: skip
    (a.out / f"{a.name}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
