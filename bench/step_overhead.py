"""Host cost of the DCP plugin per decode step, by running and split requests (CPU; labelled).

What one DP rank's scheduler spends in sglang-dcp code per decode step, beyond SGLang's own:

- ``news``: the step header's own part (``RankRuntime.news``): releases and, for each split
  request homed here, its runtime shards;
- ``route``: the step's route (``RankRuntime._step`` -> ``step_build.build_step``): slot views of
  ``req_to_token`` and guest slot tensors, no Python lists of slots;
- ``load``: laying the route out in the static exchange (``DcpAttnBackend.load``);
- ``prepare``: the metadata call (``DcpAttnBackend._prepare``): the device row map and the
  inner backend's view (split rows at length 1).

Not included: the header's collectives (a 1-int all-reduce and, with news, an all-gather; the
control-plane issue moves them onto SGLang's own sync) and the exchange's per-layer device work
(``bench/gpu_check.py`` on a GPU). Setup: rank 0 of 4, ``--running`` requests in the batch
(64..1024, 4k tokens each), ``S`` of them split over the 4 ranks (homed here, already shipped),
and ``S`` guest items from peers. Target (issue 15): <= 50 us + 5 us per split request, flat in
unsplit requests. torch on CPU: the device ops run here as CPU kernels.

**Wire bytes** (``wire_rows``): what one decode step's exchange puts on the wire on 8 ranks, at
1, 8 and 32 split requests, for DeepSeek-V3 (MLA absorbed: 128 heads, 576 out, 512 + LSE back;
61 layers) and Qwen3-235B (GQA: 64 heads x 128; 94 layers), BF16 activations, at the default
``--dcp-max-guest-items 16``. Layouts are synthetic and seeded: homes round robin over the
ranks, degree uniform in 2..8, holders drawn at random among the other ranks. ``wire_bytes``
is what the all-to-alls ship at the step's bucket (``exchange.wire.step_wire_bytes``, the
function the server's exchange sizes its messages by), ``item_bytes`` what the items need (their
rows plus one header per message that carries items), ``fixed_capacity_bytes`` what the
exchange shipped before buckets (every peer, every step, at the full capacity).

Run: ``python bench/step_overhead.py`` (writes bench/results/step_overhead.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._meta import cpu_hardware, git_commit  # noqa: E402
from sglang_dcp.sglang import context  # noqa: E402
from sglang_dcp.sglang.step import RankNews, plan_step  # noqa: E402
from sglang_dcp.testing.step_rank import make_rank  # noqa: E402

W, H, D, LEN = 4, 8, 128, 4096


def measure(running: int, split: int, iters: int) -> dict:
    k = make_rank(running, split, num_ranks=W, heads=H, head_dim=D, length=LEN)
    rt, be, batch, fb, peers = k.rt, k.be, k.batch, k.fb, k.peers
    state = SimpleNamespace(step=None)
    context.current_step = lambda: state.step  # the backend's metadata calls read it
    t = {"news": [], "route": [], "load": [], "prepare": []}
    for it in range(iters + 5):
        for req in rt.split_reqs.values():  # SGLang plans the decode batch (not timed)
            req.decode_batch_idx += 1
        t0 = time.perf_counter()
        news, _ = rt.news(batch, None)
        t1 = time.perf_counter()
        plan = plan_step([news, RankNews(decoding=peers)], [])
        step = rt.step_for(plan, predicted=True, decoded=[True] * W)
        t2 = time.perf_counter()
        if step is not None:
            be.load(step)
        t3 = time.perf_counter()
        state.step = step
        be._prepare(fb)
        t4 = time.perf_counter()
        if it >= 5:
            for k, a, b in (("news", t0, t1), ("route", t1, t2), ("load", t2, t3),
                            ("prepare", t3, t4)):  # fmt: skip
                t[k].append((b - a) * 1e6)
    row = {"running": running, "split": split}
    for k, v in t.items():
        row[k + "_us"] = statistics.median(v)
    row["total_us"] = sum(row[k + "_us"] for k in t)
    row["target_us"] = 50 + 5 * split
    row["meets"] = row["total_us"] <= row["target_us"]
    return row


WIRE_MODELS = {  # name: (layers, q_row_bytes, o_row_bytes, lse_row_bytes), BF16 activations
    "deepseek-v3 (MLA)": (61, 128 * 576 * 2, 128 * 512 * 2, 128 * 4),
    "qwen3-235b (GQA)": (94, 64 * 128 * 2, 64 * 128 * 2, 64 * 4),
}


def wire_rows(num_ranks: int = 8, splits=(1, 8, 32), capacity: int = 16, seed: int = 0):
    """Wire bytes of one decode step per model and split count (see the module doc)."""
    import random

    from sglang_dcp.exchange.wire import message_bytes, step_wire_bytes

    rows = []
    for model, (layers, q, o, lse) in WIRE_MODELS.items():
        for n in splits:
            rng = random.Random(seed * 1000 + n)
            pairs = [[0] * num_ranks for _ in range(num_ranks)]
            for i in range(n):
                home = i % num_ranks
                others = [r for r in range(num_ranks) if r != home]
                for r in rng.sample(others, rng.randint(2, num_ranks) - 1):
                    pairs[home][r] += 1
            got = step_wire_bytes(pairs, capacity=capacity, q_row_bytes=q, o_row_bytes=o,
                                  lse_row_bytes=lse)  # fmt: skip
            full = sum(message_bytes(bucket=capacity, q_row_bytes=q, o_row_bytes=o,
                                     lse_row_bytes=lse))  # fmt: skip
            busiest_items = max(sum(row[r] for r in range(num_ranks) if r != h)
                                for h, row in enumerate(pairs))  # fmt: skip
            rows.append({
                "model": model, "ranks": num_ranks, "split": n, "bucket": got["bucket"],
                "rounds": got["rounds"], "layers": layers,
                "item_bytes": got["item_bytes"] * layers,
                "wire_bytes": got["wire_bytes"] * layers,
                "wire_over_items": got["wire_bytes"] / max(got["item_bytes"], 1),
                "busiest_rank_wire_over_items": got["busiest_rank_wire_bytes"]
                / max(busiest_items * (q + o + lse), 1),
                "fixed_capacity_bytes": full * num_ranks * (num_ranks - 1) * layers,
            })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--running", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--split", type=int, nargs="+", default=[0, 1, 8, 32])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(r, s, a.iters) for r in a.running for s in a.split]
    cols = ["running", "split", "news_us", "route_us", "load_us", "prepare_us", "total_us",
            "target_us", "meets"]  # fmt: skip
    head = "| " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(
            f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print("\n".join(lines))
    meta = {"hardware": cpu_hardware() + " (CPU; torch device ops run as CPU kernels)",
            "python": platform.python_version(), "torch": torch.__version__,
            "git_commit": git_commit(short=True), "command": "python " + " ".join(sys.argv),
            "iters": a.iters, "threads": 1}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    wire = wire_rows()
    wcols = ["model", "split", "bucket", "item_bytes", "wire_bytes", "wire_over_items",
             "busiest_rank_wire_over_items", "fixed_capacity_bytes"]  # fmt: skip
    wlines = ["| " + " | ".join(wcols) + " |", "|" + "---|" * len(wcols)]
    for r in wire:
        wlines.append("| " + " | ".join(
            f"{r[c]:.2f}" if isinstance(r[c], float) else f"{r[c]:,}" if isinstance(r[c], int)
            else str(r[c]) for c in wcols) + " |")  # fmt: skip
    print("\n".join(wlines))
    (a.out / "step_overhead.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "wire": wire}, indent=2))
    within = sum(r["wire_over_items"] <= 1.25 for r in wire)
    busiest = sum(r["busiest_rank_wire_over_items"] <= 1.25 for r in wire)
    fixed = max(r["fixed_capacity_bytes"] / r["wire_bytes"] for r in wire)
    least = min(r["fixed_capacity_bytes"] / r["wire_bytes"] for r in wire)
    met = sum(r["meets"] for r in rows)
    flat = {s: [r["total_us"] for r in rows if r["split"] == s] for s in a.split}
    spread = max(max(v) / max(min(v), 1e-9) for v in flat.values())
    md = [
        "# Plugin host cost per decode step (CPU)", "",
        f"- hardware: {meta['hardware']}; Python {meta['python']}, torch {meta['torch']}",
        f"- git commit: {meta['git_commit']}; command: `{meta['command']}`",
        f"- medians of {a.iters} steps; target <= 50 us + 5 us per split request: "
        f"met in {met}/{len(rows)} cases",
        f"- flatness in running requests: the largest max/min total over 64..1024 running at "
        f"one split count is {spread:.2f}x", "",
        *lines, "",
        "Columns: see the docstring of bench/step_overhead.py (collectives and per-layer "
        "device work are not included).", "",
        "## Wire bytes per decode step (8 ranks, all layers, both directions, all ranks)", "",
        f"- target wire_bytes <= 1.25x item_bytes: met in {within}/{len(wire)} cases over all "
        f"ranks; for the busiest rank (the one the all-to-all waits for): {busiest}/{len(wire)}",
        f"- against the fixed-capacity exchange: {least:.1f}x to {fixed:.1f}x fewer bytes", "",
        *wlines, "",
        "Equal splits (what a captured graph can replay) make every rank send every peer a "
        "bucket, so a rank with fewer items than the busiest pads; see README known limits.",
    ]  # fmt: skip
    (a.out / "step_overhead.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
