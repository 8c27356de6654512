"""Planner decision speed: median / p99 ``admit`` latency per policy at steady state.

Setup: ``--ranks`` ranks (64) with ``--live`` live requests (10,000). Request lengths are drawn
(fixed seed) from the Mooncake conversation trace (input_length, output_length) when it is
found, else from a lognormal with the trace's mean. The per-rank KV capacity is sized so the
live set fills the cluster to about 75% (the profile's default capacity cannot hold 10,000
Mooncake requests on 64 ranks; capacity does not change the cost of a decision). Each timed
``admit`` is followed by an untimed ``finish`` of a random live request, so the live count stays
fixed. Rejected admits (cluster momentarily full) are timed too and counted.

Run: ``python bench/planner.py`` (writes bench/results/planner.json and planner.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._meta import cpu_hardware, git_commit  # noqa: E402
from sglang_dcp.planner import POLICIES, ClusterSpec, load_profile, make_policy  # noqa: E402
from sglang_dcp.types import Placement, Request  # noqa: E402

TRACES = [
    ROOT / "data" / "mooncake_conversation_trace.jsonl",
    ROOT.parent / "shared" / "data" / "mooncake_conversation_trace.jsonl",
]


def _lengths(rng: random.Random, count: int) -> tuple[list[tuple[int, int]], str]:
    for path in TRACES:
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            pairs = [(int(r["input_length"]), int(r["output_length"])) for r in rows]
            return [rng.choice(pairs) for _ in range(count)], path.name
    # lognormal with mean ~12k (the trace's input mean), outputs ~343
    out = [
        (int(rng.lognormvariate(8.9, 0.9)), int(rng.lognormvariate(5.5, 0.6)))
        for _ in range(count)
    ]
    return out, "lognormal(8.9, 0.9) fallback"


def bench_policy(name, profile, num_ranks, live, timed, seed, page, fill=0.75):
    rng = random.Random(seed)
    lengths, source = _lengths(rng, live + timed)
    mean_tokens = sum(a + b for a, b in lengths) / len(lengths)
    cap = int(mean_tokens * live / num_ranks / fill) // page * page
    cluster = ClusterSpec.uniform(num_ranks, cap, page)
    base, _, opts = name.partition("[")  # e.g. "dcp[home_rule=step]"
    options = dict(kv.split("=", 1) for kv in opts.rstrip("]").split("+") if kv)
    options = {k: (int(v) if v.isdigit() else v) for k, v in options.items()}
    pol = make_policy(base, cluster, profile, **options)
    ids: list[str] = []
    for i in range(live):
        got = pol.admit(Request(f"w{i}", *lengths[i]))
        if isinstance(got, Placement):
            ids.append(got.rid)
    times, rejected, split = [], 0, 0
    clock = time.perf_counter_ns
    for k in range(timed):
        r = Request(f"t{k}", *lengths[live + k])
        t0 = clock()
        got = pol.admit(r)
        times.append((clock() - t0) / 1e3)
        if isinstance(got, Placement):
            ids.append(got.rid)
            split += got.degree > 1
        else:
            rejected += 1
        j = rng.randrange(len(ids))
        ids[j], ids[-1] = ids[-1], ids[j]
        pol.finish(ids.pop())
    t0 = clock()
    moves = pol.rebalance(num_ranks * 4096)
    rebalance_us = (clock() - t0) / 1e3
    times.sort()
    return {
        "policy": name,
        "ranks": num_ranks,
        "live_requests": len(ids),
        "timed_admits": timed,
        "median_admit_us": round(statistics.median(times), 2),
        "p99_admit_us": round(times[int(0.99 * (len(times) - 1))], 2),
        "mean_admit_us": round(statistics.fmean(times), 2),
        "rejected": rejected,
        "split": split,
        "rebalance_us": round(rebalance_us, 1),
        "rebalance_moves": len(moves),
        "kv_capacity_per_rank": cap,
        "length_source": source,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--live", type=int, default=10_000)
    ap.add_argument("--timed", type=int, default=3_000)
    ap.add_argument("--profile", default="deepseek-v3-h200")
    ap.add_argument(
        "--policies",
        default=",".join(POLICIES) + ",dcp[step_slo_ms=200+split_rule=auto],dcp[home_rule=batch]",
        help="comma-separated; options in brackets joined by '+', "
        "e.g. dcp[max_degree=4+home_rule=step]",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fill", type=float, default=0.75,
                    help="fraction of the cluster's KV the live set reserves (0.75)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    profile = load_profile(args.profile)
    rows = []
    for name in args.policies.split(","):
        # warmup
        bench_policy(name, profile, args.ranks, 500, 200, args.seed + 1, profile.page_size)
        rows.append(bench_policy(
            name, profile, args.ranks, args.live, args.timed, args.seed, profile.page_size,
            args.fill,
        ))
    cols = ("policy", "ranks", "live requests", "median admit µs", "p99 admit µs", "rejected",
            "split", "rebalance µs (moves)")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = (r["policy"], r["ranks"], r["live_requests"], r["median_admit_us"],
                 r["p99_admit_us"], r["rejected"], r["split"],
                 f"{r['rebalance_us']} ({r['rebalance_moves']})")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    table = "\n".join(lines)
    print(table)
    meta = {
        "hardware": cpu_hardware(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "profile": args.profile,
        "seed": args.seed,
        "fill": args.fill,
        "target": "median admit <= 50 us at 64 ranks x 10,000 live requests",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "planner.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    md = [
        "# Planner admit latency",
        "",
        f"- hardware: {meta['hardware']} (shared with other jobs); Python {meta['python']}",
        f"- git commit: {meta['git_commit']}",
        f"- command: `{meta['command']}`",
        f"- profile: {args.profile}; lengths: {rows[0]['length_source']}; KV capacity per "
        f"rank {rows[0]['kv_capacity_per_rank']} tokens (live set fills ~{args.fill:.0%})",
        f"- each timed admit is followed by an untimed finish of a random live request; "
        f"{args.timed} timed admits per policy after filling the live set; `split` counts "
        "timed admits with degree > 1",
        "",
        table,
        "",
    ]
    (out / "planner.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
