"""The exchange's charge in the simulator, and whether ``dcp`` predicts with it.

For a few scenarios, ``dcp``'s goodput (1) with the per-item charge (``--exchange-wire items``,
``dcp`` predicting per item too), (2) with the server's bucketed charge (the default) and ``dcp``
predicting per item (``dcp:exchange_wire=items``: the planner before it knew the buckets), and
(3) with the bucketed charge and ``dcp`` predicting it (the default), plus (4) ``dcp:rejoin=1``.
(2) -> (3) is what the bucket-aware policy recovers; (1) -> (3) what the padded wire still costs.

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

SCENARIOS = (  # (workload, profile, ranks, SLO ms)
    ("agentic-claude", "deepseek-v3-h200", 16, 50),
    ("bimodal", "qwen3-235b-h200", 8, 50),
    ("agentic-codex", "deepseek-v3-h200-node8", 8, 35),
)
NUM_REQUESTS = 1500
BUCKETED = "dcp,dcp:exchange_wire=items,dcp:rejoin=1"


def run(flags: list[str], out: Path) -> tuple[dict, str]:
    cmd = ["python", "-m", "sglang_dcp.sim", *flags, "--num-requests", str(NUM_REQUESTS),
           "--no-plots", "--quiet", "--out", str(out)]
    subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True, capture_output=True)
    s = json.loads((out / "summary.json").read_text())
    return {k: v["goodput_rps"] for k, v in s["policies"].items()}, " ".join(cmd)


def main() -> int:
    rows, commands = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (w, prof, ranks, slo) in enumerate(SCENARIOS):
            base = ["--workload", w, "--profile", prof, "--ranks", str(ranks),
                    "--slo-tpot-ms", str(slo)]
            items, c1 = run(base + ["--policies", "dcp", "--exchange-wire", "items"],
                            Path(tmp) / f"{i}-items")
            bucketed, c2 = run(base + ["--policies", BUCKETED], Path(tmp) / f"{i}-bucketed")
            commands += [c1.replace(tmp, "OUT"), c2.replace(tmp, "OUT")]
            rows.append({"scenario": f"{w}, {prof}, {ranks} ranks, {slo} ms",
                         "items_charge": items["dcp"],
                         "bucketed_planner_items": bucketed["dcp:exchange_wire=items"],
                         "bucketed": bucketed["dcp"], "bucketed_rejoin": bucketed["dcp:rejoin=1"]})
    meta = {"hardware": cpu_hardware(), "git_commit": git_commit(), "commands": commands,
            "num_requests": NUM_REQUESTS, "seed": 0}
    res = ROOT / "bench" / "results"
    (res / "sim-exchange-wire.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    L = ["# The simulator's exchange charge, and `dcp` predicting it", "",
         f"- simulated (CPU: {meta['hardware']}), git commit {meta['git_commit']}, "
         f"{NUM_REQUESTS} requests, seed 0; `python bench/sim_wire.py`",
         "- per-item charge: each rank pays its own guest items (`--exchange-wire items`); "
         "bucketed (the default): every rank pays the rows the server's exchange ships, every "
         "peer one bucket of the step's busiest pair (`planner/wire_cost.py`)",
         "- commands:", *[f"  - `{c}`" for c in commands], "",
         "| scenario | dcp, per-item charge | bucketed, dcp predicting per item | bucketed, dcp "
         "predicting buckets (default) | + rejoin | recovered of the bucketed loss |",
         "|---|---|---|---|---|---|"]
    for r in rows:
        lost = r["items_charge"] - r["bucketed_planner_items"]
        rec = "-" if lost <= 0 else f"{(r['bucketed'] - r['bucketed_planner_items']) / lost:.0%}"
        L.append(f"| {r['scenario']} | {r['items_charge']:.3f} | "
                 f"{r['bucketed_planner_items']:.3f} | {r['bucketed']:.3f} | "
                 f"{r['bucketed_rejoin']:.3f} | {rec} |")
    L += ["", "Goodput in req/s; the goodput search's precision is 2% (hi/lo - 1)."]
    (res / "sim-exchange-wire.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
