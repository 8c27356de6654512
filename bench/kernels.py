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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _set_interpreter_if_cpu(argv: list[str]) -> None:
    # TRITON_INTERPRET is read when kernels are decorated, so before any kernel import
    if "--dry-run" in argv:
        os.environ.setdefault("TRITON_INTERPRET", "1")


_set_interpreter_if_cpu(sys.argv)

import torch  # noqa: E402
import triton  # noqa: E402

from sglang_dcp.kernels import decode_attention, merge_attention_states  # noqa: E402

KV_LENS = (1024, 8192, 32768, 131072)
BATCHES = (1, 8, 32, 128)
L2_BYTES = 256 << 20  # rotate inputs until one pass reads this much (H200 L2 is 60 MiB)
SGLANG_BASE_SPLITS = 8  # --triton-attention-num-kv-splits default
MAX_CONTEXT = 163840


@dataclass(frozen=True)
class Case:
    kind: str  # gqa | mla | skewed | merge
    batch: int
    kv_len: int  # per item (skewed: the long item; merge: parts per row)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_v: int
    lens: tuple[int, ...]


def sweep(dry_run: bool) -> list[Case]:
    def toy(n):  # 1k..128k -> 8..96 tokens under the interpreter
        return {1024: 8, 8192: 24, 32768: 48, 131072: 96}[n] if dry_run else n

    def tb(b):
        return min(b, 2) if dry_run else b

    gqa = (64, 8, 128, 128) if not dry_run else (16, 2, 128, 128)
    mla_heads = (16, 128) if not dry_run else (16, 32)
    cases = []
    for kv in KV_LENS:
        for b in BATCHES:
            cases.append(Case("gqa", b, kv, *gqa, (toy(kv),) * tb(b)))
            for h in mla_heads:
                cases.append(Case("mla", b, kv, h, 1, 576, 512, (toy(kv),) * tb(b)))
    long_, short, n_short = (131072, 1024, 31) if not dry_run else (96, 8, 3)
    skew = (long_,) + (short,) * n_short
    cases.append(Case("skewed", 1 + n_short, 131072, *gqa, skew))
    for h in mla_heads:
        cases.append(Case("skewed", 1 + n_short, 131072, h, 1, 576, 512, skew))
    for rows in (8, 128, 1024) if not dry_run else (2,):
        for h, dv in ((64, 128), (128, 512)) if not dry_run else ((16, 128),):
            cases.append(Case("merge", rows, 4, h, h, dv, dv, (4,) * rows))
    return cases


def kv_bytes(case: Case, elem: int) -> int:
    tokens = sum(case.lens)
    if case.kind == "merge":  # read 4 parts (o + fp32 lse), write one row
        per_row = case.num_heads * (case.head_dim_v * elem + 4)
        return case.batch * per_row * (case.kv_len + 1)
    per_token = case.num_kv_heads * case.head_dim * elem
    if case.head_dim != 576:  # MLA (head_dim 576) reads V out of the K rows
        per_token += case.num_kv_heads * case.head_dim_v * elem
    return tokens * per_token


def make_sets(case: Case, n_sets: int, dtype, device):
    """n_sets input sets whose KV slots are disjoint regions of one pool, pages of 16 slots
    shuffled inside each region (a fragmented token pool). KV is drawn on ``device`` itself (the
    largest cases hold tens of GiB)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    gd = torch.Generator(device=device).manual_seed(0)
    tokens = sum(case.lens)
    region = triton.cdiv(tokens, 16) * 16
    pool = n_sets * region
    k = torch.randn(pool, case.num_kv_heads, case.head_dim, generator=gd, device=device,
                    dtype=dtype)  # fmt: skip
    if case.head_dim == 576:  # MLA: V is the first 512 columns of K
        v = k[..., :512]
    else:
        v = torch.randn(pool, case.num_kv_heads, case.head_dim_v, generator=gd, device=device,
                        dtype=dtype)  # fmt: skip
    indptr = torch.zeros(len(case.lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.tensor(case.lens).cumsum(0)
    indptr = indptr.to(device)
    sets = []
    for s in range(n_sets):
        pages = torch.randperm(region // 16, generator=g)
        slots = (pages[:, None] * 16 + torch.arange(16)).flatten()[:tokens] + s * region
        q = torch.randn(len(case.lens), case.num_heads, case.head_dim, generator=g).to(dtype)
        sets.append((q.to(device), slots.to(torch.int32).to(device)))
    return k, v, indptr, sets


def sglang_runner(case: Case, k, v, indptr, dtype, device, dry_run: bool, peer):
    decode_attention_fwd = peer.decode_attention_fwd
    get_num_kv_splits_triton = peer.get_num_kv_splits_triton
    _mla_decode_kv_splits_cap = peer.mla_decode_kv_splits_cap

    cores = torch.cuda.get_device_properties(device).multi_processor_count if not dry_run else 16
    mla = case.head_dim == 576
    max_splits = SGLANG_BASE_SPLITS
    if mla:
        max_splits = _mla_decode_kv_splits_cap(SGLANG_BASE_SPLITS, cores, MAX_CONTEXT)
    n = len(case.lens)
    seq_lens = (indptr[1:] - indptr[:-1]).to(torch.int32)
    num_kv_splits = torch.empty(n, dtype=torch.int32, device=device)
    get_num_kv_splits_triton[(1,)](
        num_kv_splits, seq_lens, n, 1, case.num_heads, case.num_kv_heads, max_splits, cores,
        MAX_NUM_SEQ=max(256, triton.next_power_of_2(n)),
    )
    o = torch.empty(n, case.num_heads, case.head_dim_v, dtype=dtype, device=device)
    logits = torch.empty(n, case.num_heads, max_splits, case.head_dim_v, dtype=torch.float32,
                         device=device)
    lse = torch.empty(n, case.num_heads, max_splits, dtype=torch.float32, device=device)
    sm_scale = case.head_dim**-0.5

    def run(q, slots):
        decode_attention_fwd(q, k, v, o, indptr, slots, logits, lse, num_kv_splits, max_splits,
                             sm_scale, 1.0, 1.0, has_mla=mla)
        return o

    return run


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
