"""One call on a one-GPU machine: what only a GPU can show of the DCP data path.

    python3 bench/gpu_check.py [--out DIR]     # -> bench/results/gpu-check-<gpu>.json/.md (+ DIR)

Runs, on CUDA with compiled (not interpreted) Triton kernels:

1. the kernel suite (``test/kernel``: decode attention and LSE merge against float64 on poisoned
   outputs, bad inputs, sm_90 compile; SGLang parity skips where SGLang is not installed);
2. the ``gpu``-marked tests (``test/distributed``): one captured CUDA graph per bucket replayed
   against eager, and several gloo ranks sharing the GPU through the exchange;
3. the exchange self-check CLI against its float64 single-process reference: one NCCL rank with
   CUDA-graph capture/replay, and 3-4 ranks sharing the GPU (KV, buffers and kernels on CUDA;
   all-to-alls through host copies, since NCCL refuses two ranks on one device), one of them
   with capacity 1 so steps run in several rounds.

It does not need SGLang or this repo's pinned venv: the package is staged into a temp folder
(``kernels/`` as ``sglang_dcp.kernels``) and run with the machine's own torch/triton, whose
versions the report records. What it cannot show on one GPU: NCCL between ranks, SGLang's
``dcp_triton`` backend inside a server, speed (these are correctness runs, not timings).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

GPU_TEST_FILES = ("test_runner.py", "test_selfcheck.py")
SELFCHECKS = [
    ("1 NCCL rank, CUDA graphs", ["--world-size", "1", "--backend", "nccl", "--cuda-graph",
                                  "--steps", "8", "--seed", "0"]),
    ("4 gloo ranks on one GPU", ["--world-size", "4", "--device", "cuda", "--impl", "triton",
                                 "--steps", "8", "--seed", "0"]),
    ("3 gloo ranks on one GPU, capacity 1", ["--world-size", "3", "--device", "cuda", "--impl",
                                             "triton", "--capacity", "1", "--steps", "6",
                                             "--seed", "3"]),
]  # fmt: skip


def stage_package() -> Path:
    """The package as an install would lay it out (``kernels/`` -> ``sglang_dcp/kernels``)."""
    pkg = Path(tempfile.mkdtemp(prefix="sglang-dcp-pkg-"))
    shutil.copytree(ROOT / "sglang_dcp", pkg / "sglang_dcp",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(ROOT / "kernels", pkg / "sglang_dcp" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return pkg


def run(cmd: list[str], *, cwd: Path, env: dict, timeout: float) -> dict:
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, e.stdout or ""
        if isinstance(out, bytes):  # TimeoutExpired keeps bytes even with text=True
            out = out.decode(errors="replace")
        out += f"\n[timed out after {timeout:.0f} s]"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.monotonic() - t0, 1),
            "tail": out[-3000:]}  # fmt: skip


def junit_counts(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    if not path.exists():
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            counts["failed"] += 1
            counts["failures"].append(name)
            counts.setdefault("messages", {})[name] = (bad.get("message") or bad.text or "")[:800]
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def pytest_step(args: list[str], *, pkg: Path, env: dict, xml: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", *args, "-c", str(ROOT / "pytest.ini"),
           "--rootdir", str(ROOT), "-q", "-p", "no:cacheprovider", "-p", "no:benchmark",
           f"--junitxml={xml}"]  # fmt: skip
    res = run(cmd, cwd=pkg, env=env, timeout=timeout)
    res.update(junit_counts(xml))
    return res


def device_info(env: dict, pkg: Path) -> dict:
    probe = ("import json, torch, triton; p = torch.cuda.get_device_properties(0); "
             "print(json.dumps({'gpu': p.name, 'sms': p.multi_processor_count, "
             "'memory_gib': round(p.total_memory / 2**30, 1), 'torch': torch.__version__, "
             "'cuda': torch.version.cuda, 'triton': triton.__version__, "
             "'nccl': '.'.join(map(str, torch.cuda.nccl.version()))}))")  # fmt: skip
    res = run([sys.executable, "-c", probe], cwd=pkg, env=env, timeout=120)
    if res["rc"] != 0:
        raise SystemExit(f"no usable CUDA device here:\n{res['tail']}")
    return json.loads(res["tail"].strip().splitlines()[-1])


def markdown(meta: dict, steps: list[dict]) -> str:
    lines = [
        f"# GPU check of the DCP data path: {meta['gpu']}", "",
        f"git `{meta['git_sha']}`, torch {meta['torch']} (CUDA {meta['cuda']}, NCCL "
        f"{meta['nccl']}), triton {meta['triton']}, {meta['sms']} SMs, {meta['memory_gib']} GiB; "
        f"command `{meta['command']}`. The machine's own torch/triton, not this repo's pins.", "",
        "| step | result | seconds | detail |", "|---|---|---|---|",
    ]  # fmt: skip
    for s in steps:
        ok = "pass" if s["rc"] == 0 else f"FAIL (rc {s['rc']})"
        lines.append(f"| {s['name']} | {ok} | {s['seconds']} | {s['detail']} |")
    lines += ["", "Correctness runs, not timings. Not shown on one GPU: NCCL between ranks, "
              "SGLang's `dcp_triton` backend inside a server.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 bench/gpu_check.py", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--out", default=os.environ.get("OUT"), help="also copy the results here")
    ap.add_argument(
        "--workers", type=int, default=8, help="pytest-xdist workers for the kernel suite"
    )
    a = ap.parse_args(argv)

    pkg = stage_package()
    env = dict(os.environ, PYTHONPATH=str(pkg), PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    meta = device_info(env, pkg)
    meta["git_sha"] = os.environ.get("GIT_SHA") or "unknown"
    meta["command"] = "python3 bench/gpu_check.py"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    xdist = ["-n", str(a.workers)] if a.workers > 1 else []

    steps = []
    s = pytest_step([str(ROOT / "test" / "kernel"), *xdist], pkg=pkg, env=env,
                    xml=work / "kernel.xml", timeout=220)  # fmt: skip
    s["name"] = "test/kernel (compiled Triton vs float64)"
    steps.append(s)
    dist_tests = [str(ROOT / "test" / "distributed" / f) for f in GPU_TEST_FILES]
    s = pytest_step([*dist_tests, "-m", "gpu"], pkg=pkg, env=env, xml=work / "gpu.xml",
                    timeout=120)  # fmt: skip
    s["name"] = "gpu-marked tests (CUDA graphs; ranks sharing the GPU)"
    steps.append(s)
    for s in steps:
        s["detail"] = f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped" + (
            f": {', '.join(s['failures'][:6])}" if s["failures"] else "")
        if s["rc"] == 0 and s["passed"] == 0:
            s["rc"] = 5  # nothing ran is not a pass
    for name, args in SELFCHECKS:
        s = run([sys.executable, "-m", "sglang_dcp.exchange.selfcheck", *args, "--timeout", "80"],
                cwd=pkg, env=env, timeout=90)  # fmt: skip
        s["name"] = f"selfcheck: {name}"
        err = re.findall(r"max_rel_err=(\S+)", s["tail"])
        info = re.findall(r"world_size=.*", s["tail"])
        s["detail"] = f"`{' '.join(args)}`: " + (f"max_rel_err={err[-1]}" if err else "no result") + (
            f" ({info[-1].split(' ', 3)[-1]})" if info else "")
        steps.append(s)

    for s in steps:
        print(f"{'PASS' if s['rc'] == 0 else 'FAIL'}  {s['name']}  ({s['seconds']} s)  {s['detail']}")
        if s["rc"] != 0:
            print(s["tail"])
            for name, msg in s.get("messages", {}).items():
                print(f"--- {name}\n{msg}")
    slug = re.sub(r"[^a-z0-9]+", "-", meta["gpu"].lower()).strip("-")
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"gpu-check-{slug}"
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "steps": steps}, indent=2) + "\n")
    base.with_suffix(".md").write_text(markdown(meta, steps))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md"):
            shutil.copy(base.with_suffix(suffix), Path(a.out) / base.with_suffix(suffix).name)
    print(f"wrote {base}.json and .md")
    return 0 if all(s["rc"] == 0 for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
