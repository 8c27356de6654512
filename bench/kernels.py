"""Kernel benchmark: our split-KV decode attention and LSE merge against the copy-bandwidth ceiling
and SGLang 0.5.21's own Triton ``decode_attention_fwd``, on identical inputs, in one run.

    python bench/kernels.py                 # GPU: full sweep -> bench/results/kernels-<gpu>.json/.md
    python bench/kernels.py --dry-run       # CPU: every case at toy size through the interpreter
                                            #      -> bench/results/kernels-dryrun-cpu.json/.md
    python bench/kernels.py --sglang-wheel .cache/wheels/sglang-0.5.21-*.whl
                                            # a GPU machine without SGLang: the peer kernel from
                                            # the pinned wheel (bench/sglang_peer.py)

Timing: medians of CUDA-event timings of back-to-back calls after warm-up; each case rotates over
enough input sets (disjoint KV regions) that one pass reads more than the L2 cache. SGLang gets the
split counts its Triton backend would choose (``get_num_kv_splits_triton``, max 8 splits for GQA,
the MLA cap of ``_mla_decode_kv_splits_cap``), computed outside the timed region as SGLang does
once per step. A dry run's numbers are interpreter timings, labelled so, never GPU numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
L2_BYTES = 256 << 20  # rotate inputs until one pass reads this much (H200 L2 is 60 MiB)


def _set_interpreter_if_cpu(argv: list[str]) -> None:
    # TRITON_INTERPRET is read when kernels are decorated, so before any kernel import
    if "--dry-run" in argv:
        os.environ.setdefault("TRITON_INTERPRET", "1")


_set_interpreter_if_cpu(sys.argv)

import torch  # noqa: E402
import triton  # noqa: E402

from sglang_dcp.kernels import decode_attention, merge_attention_states  # noqa: E402

# siblings in bench/ (on sys.path as the script's folder, like sglang_peer below)
from kernels_cases import Case, kv_bytes, make_sets, sglang_runner, sweep  # noqa: E402
from kernels_report import markdown, summarize  # noqa: E402


def time_us(fn, sets, *, dry_run: bool, reps: int) -> float:
    """Median time of one call, in microseconds."""
    if dry_run:
        t0 = time.perf_counter()
        for args in sets:
            fn(*args)
        return (time.perf_counter() - t0) / len(sets) * 1e6
    for _ in range(3):  # warm-up (compiles on the first call)
        for args in sets:
            fn(*args)
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for args in sets:
            fn(*args)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / len(sets))
    return statistics.median(samples)


def copy_gbps(device, dry_run: bool) -> float:
    """Device-to-device copy bandwidth, counting read + write bytes."""
    n = (64 << 20) if dry_run else (2 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src), [()] * 4, dry_run=dry_run, reps=20)
    return 2 * n / (us * 1e-6) / 1e9


def run_case(case: Case, *, dtype, device, dry_run: bool, reps: int, copy: float, peer) -> dict:
    elem = torch.tensor([], dtype=dtype).element_size()
    nbytes = kv_bytes(case, elem)
    n_sets = 1 if dry_run else max(1, min(64, math.ceil(L2_BYTES / max(nbytes, 1))))
    row = dict(kind=case.kind, batch=case.batch, kv_len=case.kv_len, num_heads=case.num_heads,
               kv_bytes=nbytes, copy_gbps=round(copy, 1), sglang_us=None, max_abs_diff=None)
    if case.kind == "merge":
        g = torch.Generator().manual_seed(1)
        parts = case.batch * case.kv_len
        sets = []
        for _ in range(n_sets):
            o_parts = torch.randn(parts, case.num_heads, case.head_dim_v, generator=g).to(dtype)
            lse_parts = torch.randn(parts, case.num_heads, generator=g)
            seg = torch.arange(0, parts + 1, case.kv_len, dtype=torch.int32)
            sets.append((o_parts.to(device), lse_parts.to(device), seg.to(device)))
        ours = time_us(merge_attention_states, sets, dry_run=dry_run, reps=reps)
    else:
        k, v, indptr, sets = make_sets(case, n_sets, dtype, device)
        sm_scale = case.head_dim**-0.5

        def ours_fn(q, slots):
            return decode_attention(q, k, v, indptr, slots, sm_scale, validate=False)

        ours = time_us(ours_fn, sets, dry_run=dry_run, reps=reps)
        if k.shape[0] * k.stride(0) >= 2**31:
            # SGLang computes kv_loc * stride in int32 (its kv_indices dtype): a pool of 2^31
            # elements or more makes it read out of bounds (an illegal-address fault that ends
            # the process's CUDA context), so the peer is not run on such pools.
            row["peer_note"] = "pool >= 2^31 elements: SGLang's int32 offsets overflow"
        else:
            sglang = sglang_runner(case, k, v, indptr, dtype, device, dry_run, peer)
            row["sglang_us"] = round(time_us(sglang, sets, dry_run=dry_run, reps=reps), 2)
            q, slots = sets[0]
            diff = (ours_fn(q, slots)[0].float() - sglang(q, slots).float()).abs().max()
            row["max_abs_diff"] = float(diff)
    row["ours_us"] = round(ours, 2)
    row["ours_gbps"] = round(nbytes / (ours * 1e-6) / 1e9, 1)
    return row


def _git_sha() -> str:
    if os.environ.get("GIT_SHA"):  # a copy of the tree without .git (a lent GPU machine)
        return os.environ["GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes through the Triton interpreter")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", default=None, help="comma-separated kinds to run (gqa,mla,skewed,merge)")
    ap.add_argument("--sglang-wheel", default=None,
                    help="take SGLang's kernel from this pinned wheel file instead of the installed "
                    "SGLang (bench/sglang_peer.py)")  # fmt: skip
    ap.add_argument("--max-kv-gib", type=float, default=None,
                    help="skip cases whose KV is larger (default: 45%% of the GPU's memory)")
    args = ap.parse_args(argv)
    import sglang_peer

    peer = sglang_peer.load(args.sglang_wheel)
    torch.manual_seed(0)
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float16  # SGLang's kernel has no interpreter bf16
        gpu, label = "dryrun-cpu", "DRY RUN on CPU (Triton interpreter, toy sizes): NOT GPU numbers"
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
        gpu = torch.cuda.get_device_name().lower().replace("nvidia ", "nvidia-").replace(" ", "-")
        label = f"{torch.cuda.get_device_name()} (CUDA events, medians of {args.reps})"
    else:
        print("no CUDA device: run with --dry-run", file=sys.stderr)
        return 2
    copy = copy_gbps(device, args.dry_run)
    max_kv = args.max_kv_gib
    if max_kv is None and not args.dry_run:
        max_kv = 0.45 * torch.cuda.get_device_properties(device).total_memory / 2**30
    elem = torch.tensor([], dtype=dtype).element_size()
    rows, skipped, failed = [], [], []
    command = "python bench/kernels.py " + " ".join(argv if argv is not None else sys.argv[1:])

    static = dict(label=label, gpu=gpu, dry_run=args.dry_run, git_sha=_git_sha(),
                  dtype=str(dtype).replace("torch.", ""), torch=torch.__version__,
                  triton=triton.__version__, peer=peer.source, command=command.strip())
    out = RESULTS / f"kernels-{gpu}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)

    def write(rows, *, final: bool) -> dict:
        summary = summarize(rows)
        meta = dict(static, skipped=skipped, failed=failed, complete=final)
        out.write_text(json.dumps(dict(meta=meta, summary=summary, rows=rows), indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(meta, rows, summary))
        return summary

    for case in sweep(args.dry_run):
        if args.only and case.kind not in args.only.split(","):
            continue
        kv_gib = kv_bytes(case, elem) / 2**30
        if max_kv is not None and kv_gib > max_kv:
            skipped.append(dict(kind=case.kind, batch=case.batch, kv_len=case.kv_len,
                                num_heads=case.num_heads, kv_gib=round(kv_gib, 1)))  # fmt: skip
            print(f"skipped (KV over {max_kv:.0f} GiB): {skipped[-1]}", flush=True)
            continue
        try:
            row = run_case(case, dtype=dtype, device=device, dry_run=args.dry_run,
                           reps=args.reps, copy=copy, peer=peer)  # fmt: skip
        except Exception as e:  # one failing case must not lose the others' numbers
            failed.append(dict(kind=case.kind, batch=case.batch, kv_len=case.kv_len,
                               num_heads=case.num_heads, error=f"{type(e).__name__}: {e}"[:300]))
            print(f"FAILED: {failed[-1]}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(rows, final=False)  # partial results survive a timeout
    if not rows:
        print("no case ran", file=sys.stderr)
        return 1
    summary = write(rows, final=True)
    print(f"{label}: {len(rows)} cases, " + ", ".join(f"{k} {v}" for k, v in summary.items())
          + f" -> {out.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
