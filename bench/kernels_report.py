"""The summary and markdown report of ``bench/kernels.py`` (pure Python: rows in, text out)."""

from __future__ import annotations

import math


def summarize(rows: list[dict]) -> dict:
    attn = [r for r in rows if r["kind"] != "merge" and r["sglang_us"]]
    speedups = [r["sglang_us"] / r["ours_us"] for r in attn]
    big = [r for r in attn if r["kv_len"] >= 32768 and r["batch"] >= 8 and r["kind"] != "skewed"]
    merges = [r for r in rows if r["kind"] == "merge"]
    frac = lambda r: r["ours_gbps"] / r["copy_gbps"]  # noqa: E731
    return dict(
        geomean_speedup=round(math.exp(sum(map(math.log, speedups)) / len(speedups)), 3)
        if speedups else None,
        min_speedup=round(min(speedups), 3) if speedups else None,
        min_copy_fraction_kv32k_b8=round(min(map(frac, big)), 3) if big else None,
        min_merge_copy_fraction=round(min(map(frac, merges)), 3) if merges else None,
    )


def markdown(meta: dict, rows: list[dict], summary: dict) -> str:
    lines = [f"# Kernel benchmark: {meta['label']}", "",
             f"gpu `{meta['gpu']}`, git `{meta['git_sha']}`, dtype {meta['dtype']}, "
             f"copy {rows[0]['copy_gbps']} GB/s, torch {meta.get('torch')}, triton "
             f"{meta.get('triton')}; command `{meta.get('command', 'python bench/kernels.py')}`",
             "", f"Peer: {meta.get('peer', 'installed sglang')}.", "",
             "| kind | batch | kv_len | heads | ours us | sglang us | speedup | ours GB/s | % copy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['sglang_us'] / r['ours_us']:.2f}" if r["sglang_us"] else "-"
        peer = r["sglang_us"] or ("n/a (1)" if r.get("peer_note") else "-")
        lines.append(f"| {r['kind']} | {r['batch']} | {r['kv_len']} | {r['num_heads']} | "
                     f"{r['ours_us']} | {peer} | {sp} | {r['ours_gbps']} | "
                     f"{100 * r['ours_gbps'] / r['copy_gbps']:.0f}% |")
    lines += ["", "Summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()), ""]
    if any(r.get("peer_note") for r in rows):
        lines += ["(1) SGLang's kernel not run: its KV pool has 2^31 elements or more, and it "
                  "computes `kv_loc * stride` in int32 (an illegal-address fault was observed "
                  "on the first such case, gqa batch 128 kv_len 32768). Ours uses int64 "
                  "offsets.", ""]  # fmt: skip
    for f in meta.get("failed", []):
        lines.append(f"FAILED: {f['kind']} batch {f['batch']} kv_len {f['kv_len']} heads "
                     f"{f['num_heads']}: {f['error']}")  # fmt: skip
    if not meta.get("complete", True):
        lines.append("INCOMPLETE: the run stopped before the last case.")
    for sk in meta.get("skipped", []):
        lines.append(f"Skipped (KV {sk['kv_gib']} GiB, over --max-kv-gib): {sk['kind']} batch "
                     f"{sk['batch']} kv_len {sk['kv_len']} heads {sk['num_heads']}.")  # fmt: skip
    lines.append("")
    return "\n".join(lines)
