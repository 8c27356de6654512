"""Simulator benchmark: multi-turn agentic sessions with prefix caches, and the PD deployment.

Issue 26 item 5 and issue 24 item 7, all simulated (``sglang_dcp/sim``; nothing here ran on a
GPU). Workloads: ``sim/sessions.py`` session windows of the ``agentic-claude`` /
``agentic-codex`` mixes (TraceLab figures; 32-turn windows, set so that an ideal cache serves
TraceLab's 96% of input tokens; 2 s mean think time: an assumption). Deployments: DeepSeek-V3 on
one 8xH200 node and on 16 ranks (the shipped, derived profiles, unchanged).

1. **Colocated** (prefill on the decode ranks, stalling every rank; ``sim/deploy.py``): SGLang's
   ``round_robin``, ``total_tokens``, ``total_tokens_sglang``, each with its per-rank radix cache
   (hits only where its blind dispatch lands a turn on its session's rank); ``dcp`` with the
   sharded cache (a turn placed on its cached layout, ``planner/cached.py``), ``dcp-blind``
   (the same caches, placement ignores them), ``dcp-nocache`` (every turn prefills its whole
   prompt). Yardstick: the token-weighted mean TPOT within the SLO (P99 TPOT is reported: one
   prefill stall breaks a short request's TPOT, so no policy meets a P99 SLO here) and P99 wait
   for KV <= 2 s.
2. **PD** (prefill elsewhere, KV transferred at the profile's ``pd_gbps_per_rank`` per receiving rank): ``dcp``
   landing in its shards (``pd``) against landing on the home and shipping (``pd-home``), and
   ``total_tokens`` (whole placements: the same either way). Yardstick as ``bench/results/sim.md``:
   P99 TPOT within the SLO and P99 wait for KV <= 2 s (the transfer is not counted as a wait).

    python bench/sim_sessions.py            # everything (make bench-sim-sessions): 4 scenarios,
                                            # 14.5 min measured on 2 cores shared with others
    python bench/sim_sessions.py --quick    # 2 scenarios, fewer sessions: a smoke run

Writes ``bench/results/sim-sessions.json`` and ``.md`` (``sim_sessions_report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sglang_dcp.planner import load_profile, make_policy  # noqa: E402
from sglang_dcp.sim import cost  # noqa: E402
from sglang_dcp.sim.engine import simulate  # noqa: E402
from sglang_dcp.sim.environment import environment  # noqa: E402
from sglang_dcp.sim.experiment import BASELINES  # noqa: E402
from sglang_dcp.sim.metrics import pct  # noqa: E402
from sglang_dcp.sim.options import SimOptions  # noqa: E402
from sglang_dcp.sim.search import SearchSpec, abort_after, find_max_rate, mean_tpot_ms  # noqa
from sglang_dcp.sim.sessions import SessionSpec, draw_sessions  # noqa: E402

SLO_MS = 50.0
MAX_WAIT_MS = 2000.0
SCENARIOS = (  # (mix, profile, ranks)
    ("agentic-claude", "deepseek-v3-h200-node8", 8),
    ("agentic-codex", "deepseek-v3-h200-node8", 8),
    ("agentic-claude", "deepseek-v3-h200", 16),
    ("agentic-codex", "deepseek-v3-h200", 16),
)
# label -> (policy, deployment, prefix_cache, cache_layout)
COLOCATED = {
    "round_robin": ("round_robin", "colocated", True, False),
    "total_tokens": ("total_tokens", "colocated", True, False),
    "total_tokens_sglang": ("total_tokens_sglang", "colocated", True, False),
    "dcp": ("dcp", "colocated", True, True),
    "dcp-blind": ("dcp", "colocated", True, False),
    "dcp-nocache": ("dcp", "colocated", False, False),
}
PD = {
    "total_tokens pd": ("total_tokens", "pd", False, False),
    "dcp pd": ("dcp", "pd", False, False),
    "dcp pd-home": ("dcp", "pd-home", False, False),
}


def run_scenario(mix: str, profile_name: str, ranks: int, sessions: int, seed: int,
                 precision: float = 0.06, max_runs: int = 9) -> dict:
    prof = load_profile(profile_name)
    cl = cost.cluster_for(prof, ranks)
    model = cost.StepModel(prof, ranks, kv_capacity=max(cl.kv_capacity))
    # sessions per rank kept constant, so the 16-rank cluster sees twice the sessions
    w = draw_sessions(SessionSpec(mix=mix, num_sessions=sessions * ranks // 8), seed=seed)
    n_dec = int((w.output_len > 1).sum())
    out = {"mix": mix, "profile": profile_name, "ranks": ranks, "requests": len(w),
           "sessions": sessions * ranks // 8, "native_rate_rps": w.rate_rps,
           "kv_capacity_tokens_per_rank": cl.kv_capacity[0], "groups": {}}
    t0 = time.perf_counter()
    for group, table, stat in (("colocated", COLOCATED, "mean"), ("pd", PD, "p99")):
        spec = SearchSpec(SLO_MS, MAX_WAIT_MS, rel_precision=precision, max_runs=max_runs,
                          tpot_stat=stat)

        def run(label, rate, table=table, stat=stat, early=True):
            pol, dep, pc, lay = table[label]
            opts = {"step_slo_ms": SLO_MS, "split_rule": "auto"} if pol == "dcp" else {}
            stop = {"abort_wait_ms": MAX_WAIT_MS, "abort_wait_count": abort_after(len(w)),
                    **({"abort_tpot_ms": SLO_MS, "abort_tpot_count": abort_after(n_dec)}
                       if stat == "p99" else {})} if early else {}
            so = SimOptions(deployment=dep, prefix_cache=pc, cache_layout=lay, **stop)
            return simulate(w.at_rate(rate), make_policy(pol, cl, prof, **opts), model, ranks,
                            kv_capacity=cl.kv_capacity, options=so)

        res = {}
        for label in table:
            s = find_max_rate(lambda r, label=label: run(label, r), w.rate_rps, spec)
            res[label] = {"max_rate_rps": s.max_rate_rps, "precision": s.precision,
                          "trials": s.trials}
        base = [res[k]["max_rate_rps"] for k in res if k.split(" ")[0] in BASELINES]
        ref = max(base) if base and max(base) > 0 else min(
            (v["max_rate_rps"] for v in res.values() if v["max_rate_rps"] > 0),
            default=w.rate_rps)
        def measure(r, rate):
            return {"rate_rps": rate, "p99_tpot_ms": pct(r.tpot_ms, 99),
                    "mean_tpot_ms": mean_tpot_ms(r), "p99_kv_wait_ms": pct(r.queue_ms, 99),
                    "p99_ttft_ms": pct(r.ttft_ms, 99),
                    "p50_latency_ms": pct(r.latency_ms, 50),
                    "p99_latency_ms": pct(r.latency_ms, 99), **r.deploy}

        dcp_max = res.get("dcp", {}).get("max_rate_rps", 0.0)
        for label in table:
            r = run(label, ref, early=False)
            served = 1.0 - r.rejected / len(w)
            res[label].update(goodput_rps=res[label]["max_rate_rps"] * served,
                              rejected=r.rejected, at_reference=measure(r, ref))
            if group == "colocated" and dcp_max > 0:  # why the others fail there
                res[label]["at_dcp_max"] = measure(run(label, dcp_max, early=False), dcp_max)
        out["groups"][group] = {"reference_rate_rps": ref, "tpot_stat": stat, "policies": res}
    out["wall_s"] = time.perf_counter() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=32, help="Sessions per 8 ranks.")
    ap.add_argument("--only", default="", help="Scenarios whose id contains this (node8, r16).")
    ap.add_argument("--precision", type=float, default=0.06, help="Search: hi/lo - 1 to stop.")
    ap.add_argument("--max-runs", type=int, default=9, help="Search: most runs per policy.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 scenarios, 16 sessions.")
    ap.add_argument("--report-only", default="", metavar="JSON",
                    help="Rebuild the markdown next to this JSON; run nothing.")
    args = ap.parse_args()
    if args.report_only:
        from sim_sessions_report import write

        path = Path(args.report_only)
        path.with_suffix(".md").write_text(write(json.loads(path.read_text())))
        print(f"wrote {path.with_suffix('.md')}")
        return 0
    sid = {s: f"{s[0]}-{'node8' if s[2] == 8 else 'r' + str(s[2])}" for s in SCENARIOS}
    todo = SCENARIOS[:2] if args.quick else [s for s in SCENARIOS if args.only in sid[s]]
    sessions = 16 if args.quick else args.sessions
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = [pool.submit(run_scenario, m, p, r, sessions, args.seed, args.precision,
                            args.max_runs) for m, p, r in todo]
        rows = [f.result() for f in futs]
    env = environment()
    env["command"] = " ".join(["python bench/sim_sessions.py", *sys.argv[1:]])
    env["cpu_count"] = os.cpu_count()
    doc = {"scenarios": rows, "slo_tpot_ms": SLO_MS, "max_kv_wait_ms": MAX_WAIT_MS,
           "search": {"rel_precision": args.precision, "max_runs": args.max_runs},
           "seed": args.seed, "sessions_per_8_ranks": sessions, "env": env,
           "wall_s": time.perf_counter() - t0}
    from sim_sessions_report import write

    name = "sim-sessions-quick" if args.quick else "sim-sessions"
    res = ROOT / "bench" / "results"
    (res / f"{name}.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (res / f"{name}.md").write_text(write(doc))
    print(f"wrote {res / name}.{{json,md}} in {doc['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
