"""The goodput plot of ``bench/results/sim.md`` (and its held-out page)."""

from __future__ import annotations

from pathlib import Path


def plot_goodput(path: Path, rows: list[dict], order: tuple[str, ...]) -> None:
    """Bars of each policy's goodput over the best baseline per scenario (``rows`` of
    ``sim_report.row``), the pooled bound as a tick; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not rows:
        return
    x = np.arange(len(rows))
    w = 0.8 / len(order)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(rows)), 4.5), dpi=90)
    for k, n in enumerate(order):
        ax.bar(x + (k - len(order) / 2 + 0.5) * w, [r["ratio"].get(n) or 0 for r in rows], w,
               label=n)
    pooled = [r["pooled"] / r["best_baseline_goodput"] if r["pooled"] and
              r["best_baseline_goodput"] else np.nan for r in rows]
    ax.plot(x, pooled, "k_", ms=14, mew=2, label="pooled bound")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(x, [r["id"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("goodput / best SGLang baseline")
    ax.set_ylim(0, min(3.0, max(2.0, np.nanmax(pooled) * 1.1 if rows else 2.0)))
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
