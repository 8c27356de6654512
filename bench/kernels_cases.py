"""The cases of ``bench/kernels.py``: the sweep, the bytes each case reads, its inputs, and SGLang's
kernel set up on them as its Triton backend would be (split counts, partial buffers).

Imported by ``bench/kernels.py`` after it has set ``TRITON_INTERPRET`` for a dry run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

KV_LENS = (1024, 8192, 32768, 131072)
BATCHES = (1, 8, 32, 128)
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
