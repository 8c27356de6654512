"""The exchange's charge in the simulator, and whether ``dcp`` predicts with it.

For a few scenarios, ``dcp``'s goodput (1) with the per-item charge (``--exchange-wire items``,
``dcp`` predicting per item too); (2) with the server's exchange before scopes (``--exchange-wire
bucketed``: every rank ships every peer one bucket of the step's busiest pair) and ``dcp``
predicting per item (``dcp:exchange_wire=items``: the planner before it knew the buckets), and
(3) predicting the buckets; (4) with the server's node-scoped exchange (``scoped``, the default:
while no split request has a shard off its home's node each rank ships only its node's peers)
and ``dcp`` predicting unscoped buckets (``dcp:exchange_wire=bucketed``), (5) predicting the
scopes (the default), and (6) ``dcp:rejoin=1``. (2) -> (3) is what the bucket-aware policy
recovers, (3) -> (5) what scopes are worth, (1) -> (5) what the padded wire still costs.

    python bench/sim_wire.py            # -> bench/results/sim-exchange-wire.{json,md}
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._meta import cpu_hardware, git_commit  # noqa: E402

SCENARIOS = (  # (workload, profile, ranks, SLO ms, KV tokens per rank or None)
    ("agentic-claude", "deepseek-v3-h200", 16, 50, None),
    ("agentic-claude", "deepseek-v3-h200", 24, 35, 450_000),
    ("agentic-claude", "kimi-k2-h200-ep32", 16, 45, 300_000),
    ("bimodal", "qwen3-235b-h200", 8, 50, None),
    ("agentic-codex", "deepseek-v3-h200-node8", 8, 35, None),
)
NUM_REQUESTS = 1500
BUCKETED = "dcp,dcp:exchange_wire=items"
SCOPED = "dcp,dcp:exchange_wire=bucketed,dcp:rejoin=1"


def run(flags: list[str], out: Path) -> tuple[dict, str]:
    cmd = ["python", "-m", "sglang_dcp.sim", *flags, "--num-requests", str(NUM_REQUESTS),
           "--no-plots", "--quiet", "--out", str(out)]
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, capture_output=True)
    s = json.loads((out / "summary.json").read_text())
    return {k: v["goodput_rps"] for k, v in s["policies"].items()}, " ".join(cmd)


def main() -> int:
    rows, commands = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (w, prof, ranks, slo, kv) in enumerate(SCENARIOS):
            base = ["--workload", w, "--profile", prof, "--ranks", str(ranks),
                    "--slo-tpot-ms", str(slo), *(["--kv-capacity", str(kv)] if kv else [])]
            items, c1 = run(base + ["--policies", "dcp", "--exchange-wire", "items"],
                            Path(tmp) / f"{i}-items")
            bucketed, c2 = run(base + ["--policies", BUCKETED, "--exchange-wire", "bucketed"],
                               Path(tmp) / f"{i}-bucketed")
            scoped, c3 = run(base + ["--policies", SCOPED], Path(tmp) / f"{i}-scoped")
            commands += [c.replace(tmp, "OUT") for c in (c1, c2, c3)]
            kv_s = f", {kv // 1000}k KV" if kv else ""
            rows.append({"scenario": f"{w}, {prof}, {ranks} ranks{kv_s}, {slo} ms",
                         "items_charge": items["dcp"],
                         "bucketed_planner_items": bucketed["dcp:exchange_wire=items"],
                         "bucketed": bucketed["dcp"],
                         "scoped_planner_bucketed": scoped["dcp:exchange_wire=bucketed"],
                         "scoped": scoped["dcp"], "scoped_rejoin": scoped["dcp:rejoin=1"]})
            print(rows[-1], flush=True)
    meta = {"hardware": cpu_hardware(), "git_commit": git_commit(), "commands": commands,
            "num_requests": NUM_REQUESTS, "seed": 0}
    res = ROOT / "bench" / "results"
    (res / "sim-exchange-wire.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    L = ["# The simulator's exchange charge, and `dcp` predicting it", "",
         f"- simulated (CPU: {meta['hardware']}), git commit {meta['git_commit']}, "
         f"{NUM_REQUESTS} requests, seed 0; `python bench/sim_wire.py`",
         "- per-item charge: each rank pays its own guest items (`--exchange-wire items`); "
         "bucketed: every rank pays the rows the server's exchange shipped before scopes, every "
         "peer one bucket of the step's busiest pair; scoped (the default, what the server "
         "ships): the same, but only to the rank's node while no split request has a shard off "
         "its home's node (`planner/wire_cost.py`)",
         "- commands:", *[f"  - `{c}`" for c in commands], "",
         "| scenario | per-item charge | bucketed, dcp predicting per item | bucketed, dcp "
         "predicting buckets | scoped, dcp predicting unscoped buckets | scoped, dcp "
         "predicting scopes (default) | + rejoin | scoped / bucketed |",
         "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gain = f"{r['scoped'] / r['bucketed']:.2f}x" if r["bucketed"] else "-"
        L.append(f"| {r['scenario']} | {r['items_charge']:.3f} | "
                 f"{r['bucketed_planner_items']:.3f} | {r['bucketed']:.3f} | "
                 f"{r['scoped_planner_bucketed']:.3f} | {r['scoped']:.3f} | "
                 f"{r['scoped_rejoin']:.3f} | {gain} |")
    L += ["", "Goodput in req/s; the goodput search's precision is 2% (hi/lo - 1). On one node "
          "(8 ranks, 8 per node) the two bucketed charges are the same."]
    (res / "sim-exchange-wire.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
