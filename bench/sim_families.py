"""Simulator benchmark: where request-level DCP pays, per attention family (issue 29).

For each family profile (``sglang_dcp/profiles``: DeepSeek-V3.2 with BF16 and FP8 KV, GLM-5,
DeepSeek-V4-Pro and V4-Flash, Qwen3.5-397B, MiniMax-M2; dense MLA is ``bench/sim.py``'s matrix)
on one 8xH200 node (EP8) and on 16 ranks (EP16, 2 nodes): the agentic and bimodal
mixes up to the model's context limit (``<mix>@<limit>``, ``sim/mixes.py``: 1M for V4) x P99
TPOT SLO 35 / 50 ms, ``dcp`` against the SGLang baselines (``round_robin``, ``total_tokens``,
``total_tokens_sglang``) and the fluid and pooled bounds. Two scenarios run at once.

    python bench/sim_families.py                 # everything (make bench-sim-families)
    python bench/sim_families.py --only v4       # scenarios whose id contains "v4"
    python bench/sim_families.py --skip-runs     # rebuild the report from existing summaries
    python bench/sim_families.py --resume        # run only scenarios without a summary yet

Outputs: ``bench/results/sim-families/<scenario>/summary.{json,md}``,
``bench/results/sim-families.{md,json}`` (``sim_families_report.py``); ``bench/sim_report.py``
includes the summary section of ``sim-families.md`` in ``sim.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sim_families_report import write_family_report  # noqa: E402

POLICIES = "round_robin,total_tokens,total_tokens_sglang,dcp"
RESULTS = ROOT / "bench" / "results"
OUT_DIR = RESULTS / "sim-families"
MIXES = ("agentic-claude", "bimodal")
SLOS = (35.0, 50.0)
LIFETIMES = 6  # cluster-fulls of requests per scenario (bench/sim.py uses 10: sized to 25 min)
MIN_REQUESTS, MAX_REQUESTS = 1000, 3000
MAX_RUNS = 10  # rate-search runs per policy (sim default 14)


@dataclass(frozen=True)
class Model:
    key: str
    profile: str  # profile name without the deployment suffix
    label: str
    family: str
    context: int  # tokens
    deployments: tuple[str, ...] = ("node8", "ep16")


MODELS = (
    Model("v32", "deepseek-v32-h200", "DeepSeek-V3.2 (BF16 KV)", "DSA", 163_840),
    Model("v32fp8", "deepseek-v32-fp8kv-h200", "DeepSeek-V3.2 (FP8 KV)", "DSA", 163_840),
    Model("glm5", "glm5-h200", "GLM-5 (FP8 KV)", "DSA", 202_752),
    Model("v4pro", "deepseek-v4-pro-h200", "DeepSeek-V4-Pro", "CSA+HCA", 1_048_576,
          ("ep16",)),  # does not fit one 8xH200 node (its profile's provenance)
    Model("v4flash", "deepseek-v4-flash-h200", "DeepSeek-V4-Flash", "CSA+HCA", 1_048_576),
    Model("qwen35", "qwen35-397b-h200", "Qwen3.5-397B-A17B", "hybrid linear", 262_144),
    Model("minimax", "minimax-m2-h200", "MiniMax-M2", "dense GQA", 196_608),
)
RANKS = {"node8": 8, "ep16": 16}


def profile_name(m: Model, dep: str) -> str:
    return f"{m.profile}-{dep}"


def limit_tag(tokens: int) -> str:
    return f"{tokens // (1 << 20)}m" if tokens % (1 << 20) == 0 else f"{tokens // 1024}k"


@dataclass(frozen=True)
class Scenario:
    id: str
    model: Model
    deployment: str
    mix: str
    slo_ms: float

    @property
    def workload(self) -> str:
        return f"{self.mix}@{limit_tag(self.model.context)}"

    @property
    def profile(self) -> str:
        return profile_name(self.model, self.deployment)

    @property
    def ranks(self) -> int:
        return RANKS[self.deployment]

    @property
    def out(self) -> Path:
        return OUT_DIR / self.id

    def num_requests(self) -> int:
        """``LIFETIMES`` cluster-fulls (its KV over the mean request), in [MIN, MAX]."""
        from sglang_dcp.planner import load_profile
        from sglang_dcp.sim.workload import make_workload

        w = make_workload(self.workload, seed=0, num_requests=20_000)
        held = self.ranks * load_profile(self.profile).kv_capacity_tokens / float(
            (w.input_len + w.output_len).mean())
        n = -(-LIFETIMES * held // 500) * 500
        return int(min(MAX_REQUESTS, max(MIN_REQUESTS, n)))

    def flags(self) -> list[str]:
        return ["--workload", self.workload, "--ranks", str(self.ranks), "--profile",
                self.profile, "--slo-tpot-ms", f"{self.slo_ms:g}", "--policies", POLICIES,
                "--seed", "0", "--num-requests", str(self.num_requests()),
                "--max-runs", str(MAX_RUNS), "--no-plots", "--quiet",
                "--out", str(self.out.relative_to(ROOT))]


def scenarios() -> list[Scenario]:
    return [Scenario(f"{m.key}-{dep}-{mix}-slo{slo:g}", m, dep, mix, slo)
            for m in MODELS for dep in m.deployments for mix in MIXES for slo in SLOS]


def run_one(s: Scenario) -> tuple[Scenario, float, float, str | None]:
    """Run one scenario; returns (scenario, wall s, CPU s of the child, error or None). The CPU
    time sizes the matrix for an idle 2-core machine even when it is measured on a busy one."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err_f:
        p = subprocess.Popen([sys.executable, "-m", "sglang_dcp.sim", *s.flags()], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=err_f)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err_f.seek(0)
        lines = err_f.read().decode(errors="replace").strip().splitlines()
    err = None if p.returncode == 0 else (lines or ["?"])[-1]
    return s, time.perf_counter() - t0, ru.ru_utime + ru.ru_stime, err


def _merge_timing(path: Path, new: dict) -> None:
    """Add ``new`` to the timing file (several runners with disjoint ``--only`` may share it)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(new)
    cpu = [v["cpu_s"] for v in old.values() if isinstance(v, dict)]
    old["total_cpu_s"] = round(sum(cpu), 1)  # two workers on two idle cores: about half of it
    path.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-runs", action="store_true",
                    help="Do not run the simulator; rebuild the report from existing summaries.")
    ap.add_argument("--only", default="",
                    help="Run only scenarios whose id contains this (or one of a,b,c).")
    ap.add_argument("--jobs", type=int, default=2, help="Scenarios run at once (default 2).")
    ap.add_argument("--resume", action="store_true",
                    help="Skip scenarios whose summary.json exists (an interrupted run).")
    args = ap.parse_args()
    only = args.only.split(",")
    todo = [s for s in scenarios() if any(o in s.id for o in only)
            and not (args.resume and (s.out / "summary.json").exists())]
    timing_path = OUT_DIR / "timing.json"
    if not args.skip_runs:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
        t0 = time.perf_counter()
        # longest first (1M contexts, 16 ranks) so two workers finish together
        todo.sort(key=lambda s: (-s.model.context, -s.ranks))
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_one, s) for s in todo]
            for i, f in enumerate(as_completed(futures), 1):
                s, wall, cpu, err = f.result()
                timing[s.id] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
                print(f"[{i}/{len(todo)}] {s.id} {wall:.0f} s wall, {cpu:.0f} s CPU"
                      + (f" FAILED: {err}" if err else ""), flush=True)
                _merge_timing(timing_path, {s.id: timing[s.id]})
        if not args.only and not args.resume:
            timing["total_wall_s"] = round(time.perf_counter() - t0, 1)
        _merge_timing(timing_path, timing)
    path = write_family_report(RESULTS, scenarios())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
