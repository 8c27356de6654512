"""``bench/results/sim-families.{md,json}`` from the family matrix's summaries (issue 29).

Every sentence of the summary is computed from the table rows: gain = ``dcp`` goodput over the
best SGLang baseline's; it *pays* at >= 1.05x, is *neutral* in [0.98, 1.05), *loses* below.
The mechanism of a gain is read from the search trials: *capacity* when the baselines reject
requests no rank can hold, or when the best baseline's first failing rate fails on the P99 KV
wait (KV fragmentation: requests queue for one rank's KV); *time* when it fails on the P99
TPOT (the slowest rank's attention sets the step).
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

BASELINES = ("round_robin", "total_tokens", "total_tokens_sglang")
PAYS, LOSES = 1.05, 0.98
INCLUDE_START, INCLUDE_END = "<!-- sim.md include: start -->", "<!-- sim.md include: end -->"


def _binds(detail: dict, slo_ms: float, wait_ms: float) -> str:
    """Which rule the lowest failing rate of a policy's search broke: time / capacity / both;
    ``ceiling`` when every rate tried passed (the search never bracketed a limit)."""
    fails = sorted((t for t in detail.get("search_trials", []) if not t.get("passed")),
                   key=lambda t: t["rate_rps"])
    if not fails:
        return "ceiling"
    t = fails[0]
    tpot = (t.get("p99_tpot_ms") or math.inf) > slo_ms
    wait = (t.get("p99_kv_wait_ms") or math.inf) > wait_ms
    if t.get("aborted") and not tpot and not wait:
        # an aborted run stopped on a count of late requests; with its P99 TPOT within the
        # SLO, fewer than 1% of requests were slow: it stopped on the KV-wait count
        wait = True
    return "both" if tpot and wait else "time" if tpot else "capacity"


def _row(s, summary: dict) -> dict:
    from sglang_dcp.planner import load_profile

    pol, det = summary["policies"], summary["details"]
    search = summary["search"]
    slo, wait = search["slo_tpot_ms"], search["max_kv_wait_ms"]
    good = {n: pol[n]["goodput_rps"] for n in (*BASELINES, "dcp") if n in pol}
    best = max(BASELINES, key=lambda n: good.get(n, 0.0))
    b = good.get(best, 0.0)
    rej_base = max(pol[n]["rejected"] for n in BASELINES if n in pol)
    p = load_profile(s.profile)
    row = {
        "id": s.id, "model": s.model.label, "family": s.model.family, "deployment": s.deployment,
        "ranks": s.ranks, "profile": s.profile, "workload": s.workload, "slo_ms": slo,
        "goodput": good, "best_baseline": best, "best_baseline_goodput": b,
        "gain": good["dcp"] / b if b > 0 else None,
        "pooled": summary["pooled_bound"].get("rate_rps"),
        "fluid": summary["fluid_bound"].get("rate_rps"),
        "fluid_limited_by": summary["fluid_bound"].get("limited_by"),
        "rejected_baselines": rej_base, "rejected_dcp": pol["dcp"]["rejected"],
        "requests": pol["dcp"]["finished"] + pol["dcp"]["rejected"],
        "binds_baseline": _binds(det[best], slo, wait), "binds_dcp": _binds(det["dcp"], slo, wait),
        "p99_tpot_ms": {n: pol[n]["p99_tpot_ms"] for n in (best, "dcp")},
        "kv_bytes_per_token": p.kv_bytes_per_token, "kv_capacity_tokens": p.kv_capacity_tokens,
    }
    row["mechanism"] = _mechanism(row)
    row["verdict"] = _verdict(row["gain"], row["binds_baseline"])
    return row


def _mechanism(r: dict) -> str:
    if r["rejected_baselines"] > r["rejected_dcp"]:
        return "capacity (requests larger than a rank)"
    if r["binds_baseline"] in ("capacity", "both"):
        return "capacity (KV waits)"
    if r["binds_baseline"] == "time":
        return "time balance"
    return "-"  # ceiling: no limit found


def _verdict(g: float | None, binds: str = "") -> str:
    if binds == "ceiling":
        return "not bracketed"
    return "n/a" if g is None else "pays" if g >= PAYS else "loses" if g < LOSES else "neutral"


def _f(x, nd=2, suf=""):
    return "-" if x is None else f"{x:.{nd}f}{suf}"


def _geo(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _summary(rows: list[dict]) -> list[str]:
    L = [INCLUDE_START, "## Attention families: where `dcp` pays (issue 29)", "",
         f"Computed from the {len(rows)} scenarios of `bench/results/sim-families.md` "
         "(`make bench-sim-families`): gain = `dcp` goodput / the best SGLang baseline's; "
         f"pays >= {PAYS}x, loses < {LOSES}x.", ""]
    fams: dict[str, list[dict]] = {}
    for r in rows:
        fams.setdefault(r["family"], []).append(r)
    for fam, rs_all in fams.items():
        rs = [r for r in rs_all if r["verdict"] != "not bracketed"]
        unb = [r["id"] for r in rs_all if r["verdict"] == "not bracketed"]
        gains = [r["gain"] for r in rs if r["gain"] is not None]
        pos = [g for g in gains if g > 0]
        none = [r for r in rs if not r["gain"] and r["goodput"]["dcp"] > 0]
        models = ", ".join(dict.fromkeys(r["model"] for r in rs_all))
        note = (f" {len(unb)} scenario(s) not bracketed: every rate the search tried passed for "
                "the best baseline (the trace ends before the cluster fills; no ratio): "
                + ", ".join(unb) + "." if unb else "")
        if not pos:
            L.append(f"- **{fam}** ({models}): no bracketed scenario with a baseline meeting "
                     "the SLO." + note)
            continue
        pays = [r for r in rs if r["verdict"] == "pays"]
        loses = [r for r in rs if r["verdict"] == "loses"]
        mech: dict[str, int] = {}
        for r in pays:
            mech[r["mechanism"]] = mech.get(r["mechanism"], 0) + 1
        top = max((r for r in rs if r["gain"]), key=lambda r: r["gain"])
        cap = sorted({r["kv_bytes_per_token"] for r in rs})
        line = (f"- **{fam}** ({models}; {'/'.join(f'{c:,}' for c in cap)} B of KV per token): "
                f"pays in {len(pays)} of {len(rs)} scenarios, geomean {_geo(pos):.2f}x "
                + (f"over the {len(pos)} where `dcp` meets the SLO at some rate "
                   if len(pos) < len(gains) else "")
                + f"(min {min(gains):.2f}x, max {top['gain']:.2f}x in {top['id']})")
        if none:
            line += (f"; in {len(none)} more no baseline meets the SLO while `dcp` serves "
                     + ", ".join(f"{r['id']} ({r['goodput']['dcp']:.3f} req/s)" for r in none))
        if pays:
            line += "; the gains come through " + ", ".join(
                f"{k} ({v})" for k, v in sorted(mech.items(), key=lambda kv: -kv[1]))
        if loses:
            line += "; loses in " + ", ".join(f"{r['id']} ({r['gain']:.2f}x)" for r in loses)
        rej = [r for r in rs_all if r["rejected_baselines"] > r["rejected_dcp"]]
        if rej:
            sh = [r["rejected_baselines"] / r["requests"] for r in rej]
            line += (f"; in {len(rej)} the baselines reject {min(sh):.0%}-{max(sh):.0%} of the "
                     "requests (larger than a rank), which `dcp` serves (goodput counts only "
                     "served requests: serving them can cost more rate than it earns)")
        L.append(line + "." + note)
    by_dep: dict[str, list[float]] = {}
    for r in rows:
        if r["gain"] and r["verdict"] != "not bracketed":  # geomean: dcp > 0 only
            by_dep.setdefault(r["deployment"], []).append(r["gain"])
    L.append("- By deployment: " + "; ".join(
        f"{d}: geomean {_geo(g):.2f}x over {len(g)}" for d, g in sorted(by_dep.items())) + ".")
    tb = [r for r in rows if r["verdict"] == "pays" and r["mechanism"] == "time balance"]
    cp = [r for r in rows if r["verdict"] == "pays" and r["mechanism"].startswith("cap")]
    L.append(f"- Capacity vs time balance: of the {len(tb) + len(cp)} scenarios where `dcp` "
             f"pays, {len(cp)} gain through capacity and {len(tb)} through time balance.")
    return L + ["", INCLUDE_END]


def write_family_report(results: Path, scenarios: list) -> Path:
    rows, missing = [], []
    for s in scenarios:
        f = s.out / "summary.json"
        if not f.exists():
            missing.append(s.id)
            continue
        rows.append(_row(s, json.loads(f.read_text())))
    timing_f = results / "sim-families" / "timing.json"
    timing = json.loads(timing_f.read_text()) if timing_f.exists() else {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=results).stdout.strip()
    except OSError:
        commit = "?"
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    wall, cpu = timing.get("total_wall_s"), timing.get("total_cpu_s")
    L = ["# Simulator results: attention families (issue 29)", "",
         f"- written {now}, commit `{commit}`, {platform.processor() or platform.machine()}, "
         f"Python {platform.python_version()}"
         + (f"; `make bench-sim-families` took {wall / 60:.1f} min wall on a shared machine "
            "(nice 10)" if wall else "")
         + (f", {cpu / 60:.1f} min of CPU: about {cpu / 120:.1f} min alone on 2 cores"
            if cpu else ""),
         "- all numbers are from the simulator with the *derived* family profiles "
         "(`sglang_dcp/profiles/*.json`, see their provenance); nothing ran on a GPU.",
         "- goodput, bounds and SLO rules as in [sim.md](sim.md); mixes `<mix>@<limit>` stop at "
         "the model's context limit (`sglang_dcp/sim/mixes.py`).",
         "- *binds*: which rule the lowest failing rate of the policy's rate search broke "
         "(time = P99 TPOT, capacity = P99 KV wait).", ""]
    if missing:
        L += [f"- missing summaries (not run): {', '.join(missing)}", ""]
    L += _summary(rows) + [""]
    fams: dict[str, list[dict]] = {}
    for r in rows:
        fams.setdefault(r["family"], []).append(r)
    for fam, rs in fams.items():
        L += [f"## {fam}", "",
              "| scenario | model | KV B/token | KV/rank (tokens) | best baseline (req/s) | "
              "dcp | pooled | verdict | mechanism | binds (baseline / dcp) | "
              "rejected (baselines / dcp) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            b = r["best_baseline_goodput"]
            dcp = (f"{r['gain']:.2f}x" if r["gain"] else f"{r['goodput']['dcp']:.3f} req/s")
            L.append(f"| {r['id']} | {r['model']} | {r['kv_bytes_per_token']:,} | "
                     f"{r['kv_capacity_tokens']:,} | {r['best_baseline']} {b:.3f} | {dcp} | "
                     f"{_f(r['pooled'] / b if b and r['pooled'] else None, 2, 'x')} | "
                     f"{r['verdict']} | {r['mechanism']} | {r['binds_baseline']} / "
                     f"{r['binds_dcp']} | {r['rejected_baselines']} / {r['rejected_dcp']} |")
        L.append("")
    path = results / "sim-families.md"
    path.write_text("\n".join(L) + "\n")
    (results / "sim-families.json").write_text(json.dumps(
        {"written": now, "commit": commit, "timing": timing, "rows": rows}, indent=1) + "\n")
    return path
