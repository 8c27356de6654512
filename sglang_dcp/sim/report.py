"""Outputs of a simulator run: ``summary.json``, ``summary.md`` and PNG plots.

matplotlib is imported lazily (only ``write_plots`` needs it) with the Agg backend.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from sglang_dcp.sim.metrics import RunResult

POLICY_KEYS = ("max_rate_rps", "goodput_rps", "p50_tpot_ms", "p99_tpot_ms", "p99_latency_ms",
               "kv_imbalance", "batch_imbalance", "finished", "rejected")


def _clean(x):
    """JSON has no inf/nan: write them as null."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_summary(out_dir: Path, summary: dict) -> Path:
    path = out_dir / "summary.json"
    path.write_text(json.dumps(_clean(summary), indent=2) + "\n")
    return path


def _fmt(x, nd=2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown(summary: dict) -> str:
    """One table: goodput and the figures at the common reference rate, per policy."""
    pol = summary["policies"]
    ref = summary.get("reference", {})
    base = ref.get("best_baseline_rate_rps")
    wl, cl, se = summary["workload"], summary["cluster"], summary["search"]
    lines = [
        f"# Simulator: {wl['name']} on {cl['num_ranks']} ranks, profile `{cl['profile']}`",
        "",
        *([f"- **COUNTERFACTUAL**: the exchange's fixed and per-item costs "
           f"x{cl['exchange_scale']:g} (`--exchange-scale`): not the shipped profile, not a "
           "claim about any hardware"]
          if cl.get("exchange_scale", 1.0) != 1.0 else []),
        f"- workload: {wl['num_requests']} requests, native rate {wl['native_rate_rps']:.3f} req/s",
        f"- SLO: {'mean' if se.get('tpot_stat') == 'mean' else 'P99'} TPOT <= "
        f"{se['slo_tpot_ms']} ms and P99 KV wait <= {se['max_kv_wait_ms']} ms;"
        f" search precision (hi/lo - 1) <= {se['rel_precision']}"
        f" (achieved: {', '.join(f'{k} {_fmt(v, 3)}' for k, v in se['precision'].items())})",
        f"- TPOT, latency and imbalance columns are measured at the reference rate "
        f"{_fmt(ref.get('rate_rps'), 3)} req/s ({ref.get('why', '')})",
    ]
    if summary.get("fluid_bound"):
        fb = summary["fluid_bound"]
        lines.append(f"- fluid estimate (perfect balance, no exchange, mean loads from Little's "
                     f"law; sglang_dcp/sim/bound.py): {_fmt(fb['rate_rps'], 3)} req/s, "
                     f"limited by {fb['limited_by']}")
    if summary.get("pooled_bound"):
        lines.append(f"- pooled bound (the cluster as one rank: perfect packing and balance, no "
                     f"exchange, same arrivals and SLO rules): "
                     f"{_fmt(summary['pooled_bound']['rate_rps'], 3)} req/s")
    gbase = _best_baseline_goodput(pol)
    lines += [
        "- goodput = max rate x share of requests served (rejected requests earn nothing)",
        "",
        "| policy | max rate (req/s) | goodput (req/s) | vs best baseline | P50 TPOT (ms) | "
        "P99 TPOT (ms) | P99 KV wait (ms) | KV imbalance | batch imbalance | finished | "
        "rejected |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    det = summary.get("details", {})
    for name, p in pol.items():
        g = p.get("goodput_rps", p["max_rate_rps"])
        ratio = g / gbase if gbase and g is not None else None
        wait = det.get(name, {}).get("p99_kv_wait_ms")
        lines.append(
            f"| {name} | {_fmt(p['max_rate_rps'], 3)} | {_fmt(g, 3)} | {_fmt(ratio)}x | "
            f"{_fmt(p['p50_tpot_ms'])} | {_fmt(p['p99_tpot_ms'])} | {_fmt(wait, 0)} | "
            f"{_fmt(p['kv_imbalance'], 3)} | {_fmt(p['batch_imbalance'], 3)} | {p['finished']}"
            f" | {p['rejected']} |"
        )
    reasons = {k: group_reasons(v["reject_reasons"]) for k, v in det.items()
               if v.get("reject_reasons")}
    if reasons:
        lines += ["", "Rejections (reason with numbers as N: count):"]
        for k, v in reasons.items():
            lines += [f"- {k}: " + "; ".join(f"{n} x {r!r}" for r, n in v.items())]
    return "\n".join(lines) + "\n"


def _best_baseline_goodput(pol: dict) -> float | None:
    from sglang_dcp.sim.experiment import BASELINES

    vals = [p.get("goodput_rps", p["max_rate_rps"]) for n, p in pol.items() if n in BASELINES]
    vals = [v for v in vals if v]
    return max(vals) if vals else None


def group_reasons(reasons: dict[str, int]) -> dict[str, int]:
    """Rejection reasons with request ids and numbers folded (``N``), most frequent first."""
    out: dict[str, int] = {}
    for r, n in reasons.items():
        key = re.sub(r"'[^']*'", "'ID'", r)
        key = re.sub(r"\d+(\.\d+)?%?", "N", key)
        out[key] = out.get(key, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def write_plots(out_dir: Path, summary: dict, runs: dict[str, RunResult]) -> list[Path]:
    """goodput.png, kv_occupancy.png (runs at the reference rate), step_time.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = list(summary["policies"])
    rates = [summary["policies"][n].get("goodput_rps", summary["policies"][n]["max_rate_rps"])
             or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    bars = ax.bar(names, rates, color="tab:blue")
    ax.bar_label(bars, fmt="%.3g")
    for key, style in (("fluid_bound", ":"), ("pooled_bound", "--")):
        if summary.get(key):
            ax.axhline(summary[key]["rate_rps"], color="k", ls=style, lw=1,
                       label=key.replace("_", " "))
    if summary.get("fluid_bound") or summary.get("pooled_bound"):
        ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8, rotation=15)
    ax.set_ylabel("goodput within SLO (req/s)")
    ax.set_title(f"Goodput, P99 TPOT <= {summary['search']['slo_tpot_ms']} ms")
    fig.tight_layout()
    paths.append(out_dir / "goodput.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    recorded = {n: r for n, r in runs.items() if r.series is not None and r.series.t_ms}
    if recorded:
        fig, axes = plt.subplots(len(recorded), 1, figsize=(7, 1.9 * len(recorded) + 0.6),
                                 dpi=90, sharex=True, squeeze=False)
        for ax, (name, run) in zip(axes[:, 0], recorded.items()):
            t = np.asarray(run.series.t_ms) / 1e3
            kv = np.stack(run.series.kv_frac)
            ax.plot(t, kv, lw=0.5)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("KV used")
            ax.set_title(f"{name}: per-rank KV occupancy at {run.rate_rps:.2f} req/s",
                         fontsize=9)
        axes[-1, 0].set_xlabel("time (s)")
        fig.tight_layout()
        paths.append(out_dir / "kv_occupancy.png")
        fig.savefig(paths[-1])
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for name, run in recorded.items():
            st = np.sort(np.concatenate(run.series.step_ms))
            if len(st):
                idx = np.linspace(0, len(st) - 1, min(len(st), 1000)).astype(int)
                ax.plot(st[idx], (idx + 1) / len(st), label=name)
        ax.axvline(summary["search"]["slo_tpot_ms"], color="k", ls=":", lw=1, label="SLO")
        ax.set_xlabel("decode step time (ms)")
        ax.set_ylabel("CDF over steps")
        ax.set_title("Step-time distribution at the reference rate", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "step_time.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths
