"""Multi-turn sessions with and without the radix cache under KV sharding (CPU, issue 26).

One 4-rank CPU server (tiny random-weight Qwen3-MoE, ``--dp-size 4 --enable-dp-attention``,
float32) per configuration, the same planner budget (``--dcp-kv-capacity``) for the two ``dcp``
ones, so a long session's prompt is split over several ranks:

- ``dcp + radix``: KV sharding with SGLang's radix cache on (issue 26): unsplit turns hit their
  home's tree and the planner's prefix directory sends each turn to the rank holding the
  previous one; a split turn leaves its ranges cached where they lie and the next turn of its
  session is placed on them, prefilling only its new tokens (cached pieces, parts 2-4);
- ``dcp, no cache``: the same with ``--disable-radix-cache`` (the only way to shard before);
- ``round_robin + radix``: SGLang's own round-robin dispatch with its per-rank radix caches
  (nothing split), the baseline as SGLang runs it.

A replay: ``--sessions`` sessions (half start from a short prompt, half from a long one that the
``dcp`` planner splits), ``--turns`` turns each; turn ``t + 1``'s prompt is turn ``t``'s prompt,
its output and ``--append`` new tokens. Each turn of all sessions is sent at once; TTFT = the
latency of the turn's ``max_new_tokens=1`` request (greedy), idle ranks spinning (no
``--sleep-on-idle``: its once-a-second wake added up to 1 s). ``cached`` = SGLang's
``meta_info["cached_tokens"]``. CPU numbers of a tiny model on a shared machine: they compare the
configurations on one machine, nothing more. Writes bench/results/prefix-cpu.{json,md}.

Run: ``python bench/prefix.py`` (about 3 minutes on 2 shared cores: three server starts).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._meta import cpu_hardware, git_commit  # noqa: E402
from sglang_dcp.sglang.launch import demo_model_path  # noqa: E402
from sglang_dcp.testing.server import ServerProcess, tiny_dp_args  # noqa: E402

RANKS = 4


def configs(capacity: int) -> dict[str, list[str]]:
    planner = ["--dcp-kv-capacity", str(capacity), "--dcp-min-shard-tokens", "64"]
    return {
        "dcp + radix": planner,
        "dcp, no cache": [*planner, "--disable-radix-cache"],
        "round_robin + radix": ["--dcp-policy", "round_robin"],
    }


def turn(server, ids: list[int], rid: str) -> dict:
    payload = {"rid": rid, "input_ids": ids,
               "sampling_params": {"max_new_tokens": 1, "temperature": 0}}  # fmt: skip
    t0 = time.perf_counter()
    out = server.post("/generate", payload, timeout=900)
    dt = time.perf_counter() - t0
    meta = out["meta_info"]
    return {"rid": rid, "prompt": len(ids), "ttft_ms": dt * 1e3, "output_ids": out["output_ids"],
            "cached": int(meta.get("cached_tokens", 0)),
            "degree": meta.get("dcp", {}).get("degree", 1), "home": meta.get("dp_rank")}


def replay(server, name: str, firsts: list[list[int]], appends: list[list[list[int]]]):
    """Every session's turns in order, all sessions' turn ``t`` at once; returns the rows and
    the wall time of the whole replay (s)."""
    prompts, rows = [list(p) for p in firsts], []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(firsts)) as pool:
        for t in range(len(appends[0]) + 1):
            got = list(pool.map(lambda s: turn(server, prompts[s], f"{name}-s{s}-t{t}"),
                                range(len(firsts))))  # fmt: skip
            for s, r in enumerate(got):
                rows.append({**r, "config": name, "session": s, "turn": t})
                if t < len(appends[0]):
                    prompts[s] = prompts[s] + r["output_ids"] + appends[s][t]
    return rows, time.perf_counter() - t0


def conclusions(rows: list[dict], wall: dict[str, float]) -> list[str]:
    """What the numbers say, computed from them."""
    out = []
    base = "round_robin + radix"
    for name in wall:
        later = [r for r in rows if r["config"] == name and r["turn"] > 0]
        hit = sum(r["cached"] for r in later) / max(1, sum(r["prompt"] for r in later))
        split = [r for r in later if r["degree"] > 1]
        out.append(f"- {name}: total {wall[name]:.1f} s ({wall[name] / wall[base]:.2f}x "
                   f"{base}); turns after the first: {hit:.0%} of prompt tokens cached; "
                   f"{len(split)} of {len(later)} of them split over ranks, "
                   f"{sum(r['cached'] for r in split)} cached tokens among those")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--short", type=int, default=300, help="first prompt of the short sessions")
    ap.add_argument("--long", type=int, default=900, help="first prompt of the long sessions")
    ap.add_argument("--append", type=int, default=100, help="new tokens per later turn")
    ap.add_argument("--capacity", type=int, default=512, help="--dcp-kv-capacity per rank")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="prefix-cpu", help="result files: NAME.{json,md}")
    a = ap.parse_args()
    rng = random.Random(0)
    firsts = [[rng.randrange(3, 512) for _ in range(a.short if s % 2 == 0 else a.long)]
              for s in range(a.sessions)]  # fmt: skip
    appends = [[[rng.randrange(3, 512) for _ in range(a.append)] for _ in range(a.turns - 1)]
               for _ in range(a.sessions)]  # fmt: skip
    rows, wall = [], {}
    with tempfile.TemporaryDirectory() as logdir:
        for name, args in configs(a.capacity).items():
            log = f"{logdir}/{name.replace(' ', '_').replace(',', '').replace('+', 'and')}.log"
            srv = ServerProcess([*tiny_dp_args(demo_model_path(), RANKS, sleep_on_idle=False),
                                 *args], log,
                                startup_timeout=900).start()  # fmt: skip
            try:
                turn(srv, [5, 6, 7], f"{name}-warm")
                got, wall[name] = replay(srv, name.replace(" ", ""), firsts, appends)
            finally:
                srv.stop()
            for r in got:
                r["config"] = name
                print(f"{name:20s} session {r['session']} turn {r['turn']}: prompt "
                      f"{r['prompt']:5d} TTFT {r['ttft_ms']:7.0f} ms cached {r['cached']:5d} "
                      f"degree {r['degree']}", flush=True)
            rows += got
    for r in rows:
        r.pop("output_ids")
    lines = ["| config | turn | prompts (tokens) | TTFT ms, mean over sessions | cached tokens "
             "(sum) | split turns |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name in wall:
        for t in range(a.turns):
            rs = [r for r in rows if r["config"] == name and r["turn"] == t]
            lines.append(f"| {name} | {t + 1} | {sum(r['prompt'] for r in rs)} | "
                         f"{sum(r['ttft_ms'] for r in rs) / len(rs):.0f} | "
                         f"{sum(r['cached'] for r in rs)} | "
                         f"{sum(r['degree'] > 1 for r in rs)} of {len(rs)} |")  # fmt: skip
    lines += ["", "| config | total replay time (s) |", "|---|---|",
              *(f"| {n} | {w:.1f} |" for n, w in wall.items())]  # fmt: skip
    verdict = conclusions(rows, wall)
    print("\n".join([*lines, *verdict]))
    meta = {"hardware": cpu_hardware() + " (CPU; labelled: not a GPU measurement)",
            "python": platform.python_version(), "git_commit": git_commit(short=True),
            "command": "python " + " ".join(sys.argv), "ranks": RANKS,
            "sessions": a.sessions, "turns": a.turns, "short": a.short, "long": a.long,
            "append": a.append, "planner_capacity": a.capacity}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(
        json.dumps({"meta": meta, "wall_s": wall, "rows": rows}, indent=2))
    md = [
        "# Multi-turn sessions: the radix cache with KV sharding (CPU)", "",
        f"- hardware: {meta['hardware']}; Python {meta['python']}",
        f"- git commit: {meta['git_commit']}; command: `{meta['command']}`",
        f"- {RANKS} DP ranks, tiny random-weight Qwen3-MoE (float32); {a.sessions} sessions "
        f"(first prompts {a.short} and {a.long} tokens, alternating), {a.turns} turns, "
        f"{a.append} new tokens per later turn, 1 output token per turn; planner capacity "
        f"{a.capacity} tokens per rank (the long sessions are split by `dcp`)", "",
        *lines, "", *verdict, "",
        "Configurations and columns: see the docstring of bench/prefix.py.",
    ]  # fmt: skip
    (a.out / f"{a.name}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
