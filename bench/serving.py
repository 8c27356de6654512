"""SGLang's own serving benchmark against the demo server, once per placement policy.

``make bench-serving`` (``python bench/serving.py``): for each policy (``dcp`` and
``round_robin`` by default) it starts ``python -m sglang_dcp.launch_server --demo --dcp-policy
POLICY`` (tiny random-weight model, 4 DP ranks on CPU), runs ``python -m sglang.bench_serving
--backend sglang --dataset-name random-ids`` against it (random token ids: nothing is
downloaded), stops it, and prints the two summaries side by side. Results (JSON and markdown,
with hardware, commit and commands) go to ``bench/results/serving-cpu.{json,md}``.

CPU numbers of a tiny model on whatever cores this machine has: they compare the two policies
on the same machine and show that the whole serving path works, nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sglang_dcp.sglang.launch import demo_model_path  # noqa: E402
from sglang_dcp.testing.server import ServerProcess  # noqa: E402

METRICS = [
    ("completed", "requests completed", "{:.0f}"),
    ("duration", "duration (s)", "{:.1f}"),
    ("request_throughput", "requests/s", "{:.3f}"),
    ("input_throughput", "input tok/s", "{:.1f}"),
    ("output_throughput", "output tok/s", "{:.1f}"),
    ("mean_ttft_ms", "mean TTFT (ms)", "{:.0f}"),
    ("p99_ttft_ms", "p99 TTFT (ms)", "{:.0f}"),
    ("mean_tpot_ms", "mean TPOT (ms)", "{:.1f}"),
    ("p99_tpot_ms", "p99 TPOT (ms)", "{:.1f}"),
    ("mean_itl_ms", "mean ITL (ms)", "{:.1f}"),
    ("mean_e2e_latency_ms", "mean E2E (ms)", "{:.0f}"),
    ("p99_e2e_latency_ms", "p99 E2E (ms)", "{:.0f}"),
]


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip() or "unknown"  # fmt: skip
    except OSError:
        return "unknown"


def hardware() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores (CPU only, shared)"


def bench_args(a, url: str, tokenizer: str, out: str) -> list[str]:
    return [
        sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang", "--base-url", url,
        "--dataset-name", "random-ids", "--tokenizer", tokenizer,
        "--num-prompts", str(a.num_prompts), "--random-input-len", str(a.input_len),
        "--random-output-len", str(a.output_len), "--random-range-ratio", str(a.range_ratio),
        "--request-rate", "inf", "--max-concurrency", str(a.max_concurrency),
        "--seed", "0", "--output-file", out,
    ]  # fmt: skip


def run_policy(a, policy: str, model: str, log_dir: str) -> tuple[dict, list[str]]:
    server = ServerProcess(["--demo", "--dcp-policy", policy],
                           os.path.join(log_dir, f"server-{policy}.log"), startup_timeout=600)  # fmt: skip
    server.start()
    try:
        out = os.path.join(log_dir, f"bench-{policy}.jsonl")
        cmd = bench_args(a, server.url, model, out)
        print(f"[bench-serving] {policy}: {' '.join(cmd[1:])}", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise SystemExit(f"bench_serving failed ({policy}):\n{done.stderr[-3000:]}")
        with open(out) as f:
            result = json.loads(f.read().strip().splitlines()[-1])
    finally:
        server.stop()
    return result, cmd


def table(results: dict[str, dict]) -> str:
    names = list(results)
    rows = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label, fmt in METRICS:
        cells = [fmt.format(results[n][key]) if key in results[n] else "-" for n in names]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", default="dcp,round_robin")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--range-ratio", type=float, default=0.5)
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "serving-cpu"))
    a = p.parse_args()
    model = demo_model_path()
    results, commands = {}, {}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as log_dir:
        for policy in a.policies.split(","):
            results[policy], cmd = run_policy(a, policy, model, log_dir)
            commands[policy] = " ".join(["python", *cmd[1:]]).replace(model, "DEMO_MODEL")
    text = table(results)
    meta = {
        "what": "python -m sglang.bench_serving (SGLang 0.5.21's own client) against "
        "python -m sglang_dcp.launch_server --demo --dcp-policy POLICY (tiny random-weight "
        "Qwen3-MoE, 4 DP ranks, CPU)",
        "hardware": hardware(),
        "commit": git_sha(),
        "date": started,
        "command": "make bench-serving (python bench/serving.py " + " ".join(sys.argv[1:]) + ")",
        "bench_commands": commands,
        "results": results,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    with open(a.out + ".md", "w") as f:
        f.write(
            f"# Serving benchmark, CPU (SGLang's bench_serving against the demo)\n\n"
            f"CPU numbers of a tiny random-weight model on {meta['hardware']}: a comparison of "
            f"the two placements on one machine, not a performance claim.\n\n"
            f"- commit `{meta['commit']}`, {started}\n- `{meta['command']}`\n"
            + "".join(f"- {k}: `{v}`\n" for k, v in commands.items())
            + f"\n{text}\n"
        )
    print(f"\n[bench-serving] CPU only ({meta['hardware']}), tiny demo model, "
          f"{a.num_prompts} random-ids prompts\n{text}\n\nwritten: {a.out}.json, {a.out}.md")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
