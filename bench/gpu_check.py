"""One call on a one-GPU machine: what only a GPU can show of the DCP data path.

    python3 bench/gpu_check.py [--out DIR] [--sglang-path DIR]   # -> bench/results/gpu-check-<gpu>.*
    python3 bench/gpu_check.py --dry-run       # the same stages on CPU here (wiring, not results)

Runs, on CUDA with compiled (not interpreted) Triton kernels:

1. the kernel suite (``test/kernel``: decode attention and LSE merge against float64 on poisoned
   outputs, bad inputs, sm_90 compile; SGLang parity skips where SGLang is not installed);
2. the ``gpu``-marked tests (``test/distributed``): several gloo ranks sharing the GPU through
   the exchange (the NCCL graph test skips on one GPU);
3. the exchange self-check CLI against its float64 single-process reference, on the server's own
   runtime over SGLang's pools (``--pool sglang``: SGLang's allocator, KV pool and
   ``req_to_token`` on the GPU, shard moves through ``shipping.ship``, routes through
   ``step_build``, one ``StaticExchange`` per rank): 3-4 ranks sharing the GPU (all-to-alls
   through host copies, since NCCL refuses two ranks on one device), MHA and MLA pools, paged
   and unpaged allocators, one with capacity 1 so steps run in several rounds.

Stage 3 needs SGLang 0.5.21 importable. The GPU image has Python 3.12 and no SGLang, so its
wheel travels with the check (``--sglang-path``: a folder where it and the packages it imports
that the image lacks were installed, e.g. ``pip install --no-index --no-deps --target /tmp/site
.whl/*.whl``; the wheels are fetched here with ``pip download --no-deps --only-binary=:all:
--python-version 3.12 ...``: ``sglang==0.5.21`` and the names ``--missing`` prints). Without it,
stage 3 fails and says why; it is never skipped silently. The rest does not need SGLang or this
repo's pinned venv: the package is staged into a temp folder (``kernels/`` as
``sglang_dcp.kernels``) and run with the machine's own torch/triton, whose versions the report
records. What it cannot show on one GPU: NCCL between ranks, SGLang's ``dcp_triton`` backend
inside a server, speed (these are correctness runs, not timings).
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

GPU_TEST_FILES = ("test_selfcheck_rank.py", "test_selfcheck.py")
# the self-check on SGLang's pools, ranks sharing the one GPU (gloo, host-staged all-to-alls)
SELFCHECKS = [
    ("4 ranks, SGLang MHA pool", ["--world-size", "4", "--attention", "mha", "--steps", "8",
                                  "--seed", "0"]),
    ("3 ranks, SGLang MLA pool, paged, capacity 1", ["--world-size", "3", "--attention", "mla",
                                                     "--paged", "--capacity", "1", "--steps",
                                                     "6", "--seed", "3"]),
    ("3 ranks, SGLang MHA pool, paged, capacity 1", ["--world-size", "3", "--attention", "mha",
                                                     "--paged", "--capacity", "1", "--steps",
                                                     "6", "--seed", "4"]),
]  # fmt: skip
ON_GPU = ["--pool", "sglang", "--device", "cuda", "--impl", "triton"]
ON_CPU = ["--pool", "sglang", "--device", "cpu", "--impl", "torch"]  # --dry-run
SGLANG_PROBE = ("import sglang.srt.mem_cache.memory_pool, sglang.srt.mem_cache.allocator.paged; "
                "print('sglang', sglang.__version__)")  # fmt: skip


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


def selfcheck_steps(*, pkg: Path, env: dict, where: list[str], timeout: float) -> list[dict]:
    """Stage 3: the self-check on SGLang's pools, or one failed step saying SGLang is missing."""
    probe = run([sys.executable, "-c", SGLANG_PROBE], cwd=pkg, env=env, timeout=300)
    if probe["rc"] != 0:
        why = probe["tail"].strip().splitlines()[-1:] or ["?"]
        return [dict(probe, rc=3, name="selfcheck on SGLang's pools",
                     detail=f"SGLang is not importable here ({why[0]}); pass --sglang-path "
                            "(see the module docstring)")]  # fmt: skip
    steps = []
    for name, args in SELFCHECKS:
        cmd = [sys.executable, "-m", "sglang_dcp.exchange.selfcheck", *where, *args,
               "--timeout", str(int(timeout - 10))]  # fmt: skip
        s = run(cmd, cwd=pkg, env=env, timeout=timeout)
        s["name"] = f"selfcheck: {name}"
        err = re.findall(r"max_rel_err=(\S+)", s["tail"])
        info = re.findall(r"world_size=.*", s["tail"])
        s["detail"] = f"`{' '.join(args)}`: " + (f"max_rel_err={err[-1]}" if err else "no result") + (
            f" ({info[-1].split(' ', 3)[-1]})" if info else "")
        steps.append(s)
    return steps


def missing() -> int:
    """The distributions SGLang's pool import loads (run where SGLang is installed): the wheels
    to carry are those of them the GPU image lacks."""
    import importlib.metadata as md

    before = set(sys.modules)
    exec(SGLANG_PROBE)
    dists = md.packages_distributions()
    names = sorted({d for m in set(sys.modules) - before for d in dists.get(m.split(".")[0], ())})
    for n in names:
        print(f"{n}=={md.version(n)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 bench/gpu_check.py", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--out", default=os.environ.get("OUT"), help="also copy the results here")
    ap.add_argument(
        "--workers", type=int, default=8, help="pytest-xdist workers for the kernel suite"
    )
    ap.add_argument("--sglang-path", default=os.environ.get("SGLANG_DCP_SGLANG_PATH"),
                    help="a folder holding SGLang 0.5.21 and what it imports (PYTHONPATH)")
    ap.add_argument("--dry-run", action="store_true",
                    help="stage 3 on CPU with this interpreter's SGLang; writes no results file")
    ap.add_argument("--missing", action="store_true",
                    help="print name==version of every distribution SGLang's pool import loads")
    a = ap.parse_args(argv)
    if a.missing:
        return missing()
    if a.dry_run:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        steps = selfcheck_steps(pkg=ROOT, env=env, where=ON_CPU, timeout=900)
        for s in steps:
            print(f"{'PASS' if s['rc'] == 0 else 'FAIL'}  {s['name']}  ({s['seconds']} s)  "
                  f"{s['detail']}")  # fmt: skip
            if s["rc"] != 0:
                print(s["tail"])
        return 0 if all(s["rc"] == 0 for s in steps) else 1

    pkg = stage_package()
    path = [str(pkg)] + ([a.sglang_path] if a.sglang_path else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")
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
                    timeout=240)  # fmt: skip
    s["name"] = "gpu-marked tests (ranks sharing the GPU on SGLang's pools)"
    steps.append(s)
    for s in steps:
        s["detail"] = f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped" + (
            f": {', '.join(s['failures'][:6])}" if s["failures"] else "")
        if s["rc"] == 0 and s["passed"] == 0:
            s["rc"] = 5  # nothing ran is not a pass
    steps += selfcheck_steps(pkg=pkg, env=env, where=ON_GPU, timeout=150)

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
