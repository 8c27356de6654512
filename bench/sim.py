"""Simulator benchmark: the two Mooncake traces, 50 ms P99 TPOT SLO.

Runs ``python -m sglang_dcp.sim`` for each scenario below (headline: DeepSeek-V3/H200 profile,
16 ranks, the four policies), then writes ``bench/results/sim.md``: the targets with MET / NOT MET,
the fluid (perfect-balance) estimate, where each policy's step time goes, and the timing of one
12k-request run. Traces come from ``$SGLANG_DCP_TRACE_DIR`` or ``../shared/data``; they are never
copied into the repository.

    python bench/sim.py                 # run everything (~10 min on 2 busy cores)
    python bench/sim.py --skip-runs     # only rebuild sim.md from existing summaries
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sglang_dcp.sim.engine import SimOptions  # noqa: E402
from sglang_dcp.sim.experiment import Experiment, environment  # noqa: E402
from sglang_dcp.sim.search import SearchSpec  # noqa: E402
from sglang_dcp.sim.workload import find_trace, load_trace  # noqa: E402

TRACES = ("conversation", "synthetic")
SLO_MS = 50.0
# (profile, ranks, policies, directory suffix, role)
SCENARIOS = (
    ("deepseek-v3-h200", 16, "round_robin,total_tokens,uniform,dcp", "", "headline"),
    ("deepseek-v3-h200", 16, "round_robin,total_tokens," + ",".join(
        f"dcp:{v}" for v in ("split_rule=gain:home_rule=batch", "split_rule=gain",
                             "home_rule=batch", "split_min_free=0", "max_degree=1")),
     "-dcp-variants", "planner options (same profile)"),
    ("deepseek-v3-h200", 16, "round_robin,total_tokens,dcp", "-migration-stall",
     "rebalance copies stall the cluster (--migration stall)"),
    ("qwen3-235b-h200", 8, "round_robin,total_tokens,uniform,dcp", "", "other shipped profile"),
)


TOY_DIR = "sim-tiny-tightkv-deepseek-v3-h200-r4"
TOY_FLAGS = ["--workload", "tiny", "--seed", "0", "--ranks", "4", "--kv-capacity", "32768",
             "--max-kv-wait-ms", "100", "--profile", "deepseek-v3-h200", "--slo-tpot-ms", "50",
             "--policies", "round_robin,total_tokens,uniform,dcp,dcp:split_rule=gain:home_rule=batch,"
             "dcp:max_degree=1", "--no-plots", "--quiet"]


def out_dir(results: Path, trace: str, *, profile: str, ranks: int, suffix: str) -> Path:
    return results / f"sim-{trace}-{profile}-r{ranks}{suffix}"


def headline_dir(results: Path, trace: str) -> Path:
    return out_dir(results, trace, profile="deepseek-v3-h200", ranks=16, suffix="")


def cli(args: list[str]) -> tuple[str, float, float]:
    """Run the CLI; returns (command, wall s, child CPU s)."""
    cmd = [sys.executable, "-m", "sglang_dcp.sim", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return " ".join(["python -m sglang_dcp.sim", *args]), wall, cpu


def breakdown(trace_path: Path, profile: str, *, ranks: int, policies: list[str],
              rate: float):
    """Step-time-weighted mean of the slowest rank's terms at ``rate``, per policy (ms)."""
    w = load_trace(trace_path)
    exp = Experiment(w, ranks, profile, tuple(policies), SearchSpec(SLO_MS, 2000.0),
                     SimOptions(rebalance_every_ms=1000.0, rebalance_max_tokens=262144))
    p = exp.profile
    out = {}
    for name in policies:
        loads, acc = {}, np.zeros(5)
        total = [0.0]
        set_loads, step_ms = exp.model.set_loads, exp.model.step_ms

        def spy_loads(b, gi, go, _f=set_loads):
            loads.update(b=list(b), gi=list(gi), go=[int(x) for x in go])
            _f(b, gi, go)

        def spy_step(kv, _f=step_ms):
            st = _f(kv)
            b, gi, go = loads["b"], loads["gi"], loads["go"]
            terms = [(p.attention_us(kv[0][r], b[r] + gi[r]),
                      p.exchange_us(gi[r], go[r]) + p.merge_us(go[r]), p.compute_us(b[r]))
                     for r in range(ranks)]
            slow = max(terms, key=sum)
            fixed = p.exchange_us_fixed if (any(gi) or any(go)) else 0.0
            acc[:] += st.sum() * np.array([*slow, p.moe_us(max(b)), fixed]) * 1e-3
            total[0] += st.sum()
            return st

        exp.model.set_loads, exp.model.step_ms = spy_loads, spy_step
        exp.run(name, rate)
        exp.model.set_loads, exp.model.step_ms = set_loads, step_ms
        out[name] = (acc / max(total[0], 1e-9)).tolist()
    return out


def verdict(ok: bool) -> str:
    return "**MET**" if ok else "**NOT MET**"


def explanation(headline: dict, variants: dict, toy: dict | None) -> list[str]:
    """Why targets are (not) met, with the numbers of this run."""
    from sglang_dcp.planner.profile import load_profile
    from sglang_dcp.sim.bound import fluid_step_ms

    p = load_profile("deepseek-v3-h200")
    floor = (p.compute_us_floor + p.moe_us_fixed + p.attn_us_fixed) * 1e-3
    L = ["## Why (read this before the numbers)", ""]
    ceil, tt_kv, need = [], [], []
    for trace, s in headline.items():
        fb, best = s.get("fluid_bound", {}), s["reference"]["best_baseline_rate_rps"]
        if fb and best:
            ceil.append(f"{trace} {fb['rate_rps']:.1f} req/s = {fb['rate_rps'] / best:.2f}x the "
                        f"best baseline (limited by {fb['limited_by']})")
        tt_kv.append(f"{s['policies']['total_tokens']['kv_imbalance']:.2f} on {trace}")
        w = load_trace(find_trace(trace))
        base_p99 = max(s["policies"][n]["p99_tpot_ms"] for n in ("round_robin", "total_tokens")
                       if s["policies"][n]["max_rate_rps"] == best)
        ref = s["reference"]["rate_rps"]
        if fb and ref <= fb["rate_rps"]:
            need.append(f"{trace}: <= {base_p99 / 1.8:.1f} ms where a perfectly balanced "
                        f"cluster steps at {fluid_step_ms(w, p, 16, ref):.1f} ms on average")
        else:  # past the steady-state estimate (a transient): compare with the floor
            need.append(f"{trace}: <= {base_p99 / 1.8:.1f} ms, while at the peak of its "
                        f"transient the KV is full (attention alone "
                        f"{p.attention_us(p.kv_capacity_tokens, 0) / 1e3:.1f} ms on every rank) "
                        f"on top of the {floor:.1f} ms floor")
    syn = headline.get("synthetic")
    L += [
        "1. **The ceiling is low under this profile.** The fluid estimate (`sim/bound.py`: a "
        "perfectly balanced cluster that pays nothing for exchange, loads from Little's law) "
        f"sustains {'; '.join(ceil)}. No placement can reach 1.9x here. Two things cap it: "
        f"{floor:.1f} ms of every step (weight-read floor {p.compute_us_floor / 1e3:.1f} ms, "
        f"MoE dispatch/combine latency {p.moe_us_fixed / 1e3:.1f} ms, attention launches "
        f"{p.attn_us_fixed / 1e3:.1f} ms) do not depend on placement, and KV capacity "
        f"({p.kv_capacity_tokens:,} tokens/rank) fills at about the rate at which the step "
        "reaches the SLO. `total_tokens` with exact load counts (the planner's baseline has no "
        f"stale reports) already holds KV imbalance to {', '.join(tt_kv)}, so the imbalance left "
        "to win is a few ms per step (compare the attention and MoE columns below).",
    ]
    if syn:
        x = syn["reference"]["rate_rps"] / syn["workload"]["native_rate_rps"]
        L.append(f"   On the synthetic trace the best baseline even beats the estimate: compressed "
                 f"{x:.0f}x, its {syn['workload']['num_requests']:,} requests arrive in "
                 f"~{1022 / x:.0f} s, a ramp-up-and-drain transient that a steady-state estimate "
                 "does not describe (see its KV plot); the same transient drives the loaded-window "
                 "KV imbalance of every policy up (ranks fill from empty).")
    L += [
        "2. **`dcp`'s rule: split only for fit.** Home = the rank with the lowest predicted "
        "step with the request on it (MoE barrier included); a request that some rank can hold "
        "whole is never split; one that no rank can hold whole is split (shards water-filled "
        "over the fastest ranks, each >= the break-even "
        f"{p.break_even_tokens():,} tokens) when it could never fit whole or at least 20% of "
        "the cluster's KV is free (fragmentation), and otherwise waits (the cluster is "
        "KV-bound: a split would only pack the last free pages). Why: a split's gain is "
        "transient (it lowers the slowest rank at admission; later admissions level that rank "
        "anyway) while its cost recurs every step of the request's life: "
        f"{p.exchange_us_per_item / 1e3:.2f} ms per guest item on both ranks (option A "
        "exchange at DeepEP RDMA bandwidth) plus "
        f"{p.exchange_us_fixed / 1e3:.2f} ms per step once any guest exists.",
    ]
    var_lines = []
    for trace, s in variants.items():
        best = s["reference"]["best_baseline_rate_rps"]
        for name, fig in s["policies"].items():
            if name.startswith("dcp"):
                var_lines.append(f"{trace} `{name}` {fig['max_rate_rps'] / best:.2f}x")
    if var_lines:
        L.append("3. **Planner options, same profile** (sensitivity, not the headline): "
                 + "; ".join(var_lines) + ". `split_rule=gain:home_rule=batch` is the previous "
                 "default (split at admission whenever the predicted step drops by more than the "
                 "fixed exchange cost; home = fewest homed requests): the exchange it accumulates "
                 "sets the step. `split_rule=gain` keeps those splits with the step-time home. "
                 "`home_rule=batch` (fit rule, home = fewest homed requests) stacks long requests "
                 "on ranks that happen to have few, so their attention sets the step (worst on the "
                 "long-tailed synthetic trace). `split_min_free=0` splits every request that does not fit whole "
                 "now: on the KV-bound conversation trace that admits requests into the last "
                 "free pages, KV fills, steps and KV waits grow. `max_degree=1` never splits: "
                 "as good as the default on these traces, but it loses the tight-KV win (5.).")
    L.append("4. **P99 TPOT 1.8x lower at the baseline's max rate** would need `dcp` at "
             + "; ".join(need) + ": out of reach for any placement under this profile.")
    if toy:
        best = toy["reference"]["best_baseline_rate_rps"]
        rates = ", ".join(f"`{n}` {f['max_rate_rps'] / best:.2f}x"
                          for n, f in toy["policies"].items())
        L.append("5. **Where `dcp` does win** in this model: KV-bound clusters where a "
                 "request must fit on one rank and the baselines fragment KV. A toy with the "
                 "same profile but 4 ranks x 32,768 KV tokens (`--workload tiny`, command "
                 f"above, KV-wait limit 100 ms): {rates} of the best baseline. The Mooncake "
                 "traces on the profile's 853k tokens/rank are not in that regime.")
    L.append("")
    return L


def write_report(results: Path, timing: dict | None, commands: list[str]) -> Path:
    env = environment()
    L = [
        "# Simulator results vs targets",
        "",
        f"- date: {env['date']}; commit: `{env['commit'] or 'unknown (no commit yet)'}`",
        f"- hardware: {env['cpu']} (2 cores shared with other jobs), Python {env['python']}",
        f"- SLO: P99 TPOT <= {SLO_MS:.0f} ms and P99 wait for KV <= 2000 ms (the cluster keeps up);"
        " rate search precision hi/lo - 1 <= 0.02",
        "- profile numbers are the planner's shipped, *derived* profiles (see their provenance);"
        " nothing was tuned here.",
        "",
        "Commands (from the repository root; traces from `../shared/data`, not committed):",
        "",
        "```",
        *commands,
        "```",
        "",
    ]
    headline = {}
    for trace in TRACES:
        d = headline_dir(results, trace)
        if (d / "summary.json").is_file():
            headline[trace] = json.loads((d / "summary.json").read_text())
    if not headline:
        L.append("No headline summaries found: run `python bench/sim.py`.")
    L += ["## Targets (DeepSeek-V3/H200 profile, 16 ranks, 50 ms P99 TPOT)", "",
          "| target | " + " | ".join(headline) + " |",
          "|---|" + "---|" * len(headline)]
    rows = {k: [] for k in ("g_base", "g_noreg", "g_uni", "tpot", "kv", "batch")}
    for trace, s in headline.items():
        pol, r = s["policies"], s["ratios"]
        d = pol["dcp"]
        g = r.get("dcp_goodput_vs_best_baseline", 0.0)
        u = r.get("dcp_goodput_vs_uniform", 0.0)
        t = r.get("baseline_p99_tpot_over_dcp", 0.0)
        rows["g_base"].append(f"{g:.2f}x {verdict(g >= 1.9)}")
        fb = s.get("fluid_bound", {}).get("rate_rps")
        best = s["reference"]["best_baseline_rate_rps"]
        bound = f" (fluid bound {fb / best:.2f}x)" if fb and best else ""
        rows["g_noreg"].append(f"{g:.2f}x{bound} {verdict(g >= 1.0)}")
        rows["g_uni"].append(f"{u:.2f}x {verdict(u >= 1.2)}")
        rows["tpot"].append(f"{t:.2f}x {verdict(t >= 1.8)}")
        rows["kv"].append(f"{d['kv_imbalance']:.3f} {verdict(d['kv_imbalance'] <= 1.10)}")
        rows["batch"].append(f"{d['batch_imbalance']:.3f} {verdict(d['batch_imbalance'] <= 1.10)}")
    names = {"g_base": "dcp goodput / best of round_robin, total_tokens >= 1.9x",
             "g_noreg": "dcp goodput / best of round_robin, total_tokens >= 1.0x (no regression)",
             "g_uni": "dcp goodput / uniform >= 1.2x",
             "tpot": "baseline P99 TPOT / dcp P99 TPOT at the baseline's max rate >= 1.8x",
             "kv": "dcp kv_imbalance <= 1.10", "batch": "dcp batch_imbalance <= 1.10"}
    for k, cells in rows.items():
        L.append(f"| {names[k]} | " + " | ".join(cells) + " |")
    if timing:
        ok = timing["cpu_s"] <= 60
        L.append(f"| 12k conversation trace, 16 ranks, one policy, one rate <= 60 s on one core | "
                 f"{timing['cpu_s']:.1f} s CPU ({timing['wall_s']:.1f} s wall, {timing['what']}) "
                 f"{verdict(ok)} | |")
    L.append("")
    variants = {}
    for trace in headline:
        d = out_dir(results, trace, profile="deepseek-v3-h200", ranks=16, suffix="-dcp-variants")
        if (d / "summary.json").is_file():
            variants[trace] = json.loads((d / "summary.json").read_text())
    toy = None
    if (results / TOY_DIR / "summary.json").is_file():
        toy = json.loads((results / TOY_DIR / "summary.json").read_text())
    L += explanation(headline, variants, toy)

    for trace, s in headline.items():
        fb = s.get("fluid_bound", {})
        best = s["reference"]["best_baseline_rate_rps"]
        L += [f"## {trace} trace", "",
              *Path(headline_dir(results, trace) / "summary.md")
              .read_text().splitlines()[2:], ""]
        if fb and best:
            L += [f"Fluid estimate / best baseline = {fb['rate_rps']:.1f} / {best:.1f} = "
                  f"**{fb['rate_rps'] / best:.2f}x**: the most any placement could gain under "
                  "this profile (perfect balance, free exchange).", ""]
        bd = s.get("breakdown")
        if bd:
            L += ["Where the step goes at the reference rate (step-time-weighted means, ms; the "
                  "first three are the slowest rank's terms):", "",
                  "| policy | attention | exchange + merge | compute | MoE (largest batch) | "
                  "exchange fixed | sum |", "|---|---|---|---|---|---|---|"]
            for name, v in bd.items():
                L.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in v)
                         + f" | {sum(v):.1f} |")
            L.append("")
        rel = headline_dir(Path("."), trace)
        L += [" ".join(f"![{png}]({rel}/{png}.png)"
                       for png in ("goodput", "step_time", "kv_occupancy")), ""]

    L += ["## Sensitivity (not the headline)", ""]
    for profile, ranks, _pols, suffix, role in SCENARIOS[1:]:
        for trace in TRACES:
            d = out_dir(results, trace, profile=profile, ranks=ranks, suffix=suffix)
            if not (d / "summary.json").is_file():
                continue
            s = json.loads((d / "summary.json").read_text())
            best = s["reference"]["best_baseline_rate_rps"] or float("nan")
            fb = s.get("fluid_bound", {}).get("rate_rps", float("nan"))
            L += [f"### {trace}, {profile}, {ranks} ranks: {role}", "",
                  f"Fluid estimate {fb:.1f} req/s ({fb / best:.2f}x the best baseline).", "",
                  "| policy | max rate (req/s) | vs best baseline | P99 TPOT at ref (ms) | "
                  "KV imb. | batch imb. |", "|---|---|---|---|---|---|"]
            for name, p in s["policies"].items():
                L.append(f"| {name} | {p['max_rate_rps']:.2f} | {p['max_rate_rps'] / best:.2f}x"
                         f" | {p['p99_tpot_ms']:.1f} | {p['kv_imbalance']:.3f} | "
                         f"{p['batch_imbalance']:.3f} |")
            L.append("")
    path = results / "sim.md"
    path.write_text("\n".join(L) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"),
                    help="Directory for the per-scenario outputs and sim.md.")
    ap.add_argument("--skip-runs", action="store_true",
                    help="Do not run the simulator; rebuild sim.md from existing summaries.")
    args = ap.parse_args()
    results = Path(args.results)
    commands, timing = [], None
    for trace in TRACES:
        path = find_trace(trace)
        if path is None:
            print(f"skip {trace}: trace not found ($SGLANG_DCP_TRACE_DIR or ../shared/data)")
            continue
        rel = Path("..") / "shared" / "data" / path.name
        for profile, ranks, pols, suffix, role in SCENARIOS:
            d = out_dir(results, trace, profile=profile, ranks=ranks, suffix=suffix)
            flags = ["--trace", str(rel), "--ranks", str(ranks), "--profile", profile,
                     "--slo-tpot-ms", f"{SLO_MS:g}", "--policies", pols,
                     "--out", str(d.relative_to(ROOT)), "--quiet"]
            if suffix == "-migration-stall":
                flags[-1:-1] = ["--migration", "stall"]
            if role != "headline":  # keep the repository small: plots for the headline only
                flags[-1:-1] = ["--no-plots"]
            commands.append(" ".join(["python -m sglang_dcp.sim", *flags]))
            if not args.skip_runs:
                cmd, wall, _ = cli([str(path) if f == str(rel) else f for f in flags])
                print(f"{cmd}: {wall:.0f} s", flush=True)
        d = headline_dir(results, trace)
        if not args.skip_runs and (d / "summary.json").is_file():
            s = json.loads((d / "summary.json").read_text())
            s["breakdown"] = breakdown(path, "deepseek-v3-h200", ranks=16,
                                       policies=list(s["policies"]),
                                       rate=s["reference"]["rate_rps"])
            (d / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
        if trace == "conversation" and not args.skip_runs:
            w = load_trace(path)
            flags = ["--trace", str(path), "--ranks", "16", "--policies", "dcp", "--rate",
                     f"{w.rate_rps:.4f}", "--no-plots", "--quiet", "--out", "/tmp/sim-timing"]
            cmd, wall, cpu = cli(flags)
            timing = {"wall_s": wall, "cpu_s": cpu,
                      "what": f"dcp at the native {w.rate_rps:.2f} req/s, the most steps"}
            (results / "sim-timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    toy_flags = [*TOY_FLAGS, "--out", str((results / TOY_DIR).relative_to(ROOT))]
    commands.append(" ".join(["python -m sglang_dcp.sim", *toy_flags]))
    if not args.skip_runs:
        cli(toy_flags)
    if timing is None and (results / "sim-timing.json").is_file():
        timing = json.loads((results / "sim-timing.json").read_text())
    print(f"wrote {write_report(results, timing, commands)}")


if __name__ == "__main__":
    main()
