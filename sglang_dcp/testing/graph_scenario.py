"""The workload of ``graph_harness``: a stand-in for SGLang's CUDA-only ``triton`` decode path,
known K/V and queries, the float64 reference, and a scenario whose routes, splits, finishes and
arrivals change from step to step. Shapes: ``H`` query heads, ``HKV`` KV heads, ``D`` head dim.
"""

from __future__ import annotations

import functools
import random

import torch

from sglang_dcp.exchange.wire import node_ranks
from sglang_dcp.kernels import decode_attention

H, HKV, D, LAYERS, SM = 4, 2, 8, 2, 0.35
MAX_LEN, NUM_REQS = 64, 10
FP8, KV_SCALE = torch.float8_e4m3fn, 0.5  # the FP8 runs: e4m3 cache, one scale per tensor


def store(buf: torch.Tensor, idx, value) -> None:
    """Write K or V as SGLang's pools do: an FP8 cache holds ``value / scale``."""
    if buf.dtype == FP8 and isinstance(value, torch.Tensor):
        value = (value / KV_SCALE).to(FP8)
    buf[idx] = value


def seen(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What attention reads back of a stored ``value``."""
    return (value / KV_SCALE).to(FP8).float() * KV_SCALE if dtype == FP8 else value


class TritonLikeInner:
    """Stand-in for SGLang's CUDA-only ``triton`` backend's decode path (see module doc)."""

    def __init__(self, runner) -> None:
        self.r = runner
        self.kv_indptr = self.kv_indices = None

    def get_cuda_graph_seq_len_fill_value(self) -> int:
        return 1

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        self.kv_indptr = torch.zeros(max_bs + 1, dtype=torch.int32)
        self.kv_indices = torch.zeros(max_bs * MAX_LEN, dtype=torch.int64)

    def init_forward_metadata(self, fb) -> None:
        self.init_forward_metadata_out_graph(fb)

    def init_forward_metadata_out_graph(self, fb, in_capture: bool = False) -> None:
        if self.kv_indptr is None:
            self.init_cuda_graph_state(64, 64)
        bs = fb.req_pool_indices.shape[0]
        lens = fb.seq_lens.long()
        host = getattr(fb, "seq_lens_cpu", None)
        if host is not None:  # FlashInfer-like backends plan on the host mirror: it must agree
            if not torch.equal(host.long(), lens):
                raise AssertionError(f"seq_lens_cpu {host.tolist()} != seq_lens {lens.tolist()}")
            lens = host.long()
        self.kv_indptr[1 : bs + 1].copy_(torch.cumsum(lens, 0))
        rows = self.r.req_to_token_pool.req_to_token[fb.req_pool_indices.long()]
        pos = 0
        for i in range(bs):  # (create_flashinfer_kv_indices_triton on GPU)
            n = int(lens[i])
            self.kv_indices[pos : pos + n] = rows[i, :n]
            pos += n
        self.bs = bs

    def init_forward_metadata_in_graph(self, fb) -> None:
        pass

    def forward(self, q, k, v, layer, fb, save_kv_cache=True, **kwargs):
        pool = self.r.token_to_kv_pool
        if save_kv_cache:
            store(pool.k[layer.layer_id], fb.out_cache_loc, k)
            store(pool.v[layer.layer_id], fb.out_cache_loc, v)
        n = q.shape[0]
        scales = dict(k_scale=KV_SCALE, v_scale=KV_SCALE) if pool.k[0].dtype == FP8 else {}
        o, _ = decode_attention(
            q.view(n, H, D), pool.k[layer.layer_id], pool.v[layer.layer_id],
            self.kv_indptr[: n + 1], self.kv_indices, layer.scaling, impl="torch", **scales,
        )  # fmt: skip
        return o.reshape(n, H * D)


@functools.lru_cache(maxsize=None)
def kv_value(rid: int, token: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Known K/V of one token, the same on every rank: [HKV, D] each."""
    g = torch.Generator().manual_seed(rid * 100_003 + token * 101 + layer)
    return torch.randn(HKV, D, generator=g), torch.randn(HKV, D, generator=g)


def q_value(rid: int, step: int, layer: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7 + rid * 7919 + step * 31 + layer)
    return torch.randn(H, D, generator=g)


def reference(rid: int, length: int, step: int, layer: int, dtype=torch.float32) -> torch.Tensor:
    """float64 attention of the request's query over all its tokens (as the cache holds them in
    ``dtype``): [H * D]."""
    ks, vs = zip(*((seen(k, dtype), seen(v, dtype)) for k, v in
                   (kv_value(rid, t, layer) for t in range(length))))  # fmt: skip
    k = torch.stack(ks).double().repeat_interleave(H // HKV, 1)  # [n, H, D]
    v = torch.stack(vs).double().repeat_interleave(H // HKV, 1)
    q = q_value(rid, step, layer).double()
    p = torch.softmax(torch.einsum("hd,nhd->hn", q, k) * SM, dim=1)
    return torch.einsum("hn,nhd->hd", p, v).reshape(-1)


def scenario(num_ranks: int, steps: int, seed: int, ranks_per_node: int = 0):
    """Per step: the running requests as (rid, home, length, shards) with shards (rank, start,
    end) covering [0, length); splits, finishes and arrivals change from step to step.
    ``ranks_per_node``: every shard on its home's node (node-scoped steps only)."""
    rng = random.Random(seed)
    live: dict[int, list] = {}
    out = []
    nxt = 0
    for i in range(steps):
        quiet = i % 8 == 7  # every split request finishes: a step with nothing split
        for rid in list(live):
            if rng.random() < 0.15 or (quiet and len(live[rid][2]) > 0):
                del live[rid]
        target = rng.randrange(2, 8)
        while len(live) < target and nxt < NUM_REQS * 4:
            home = rng.randrange(num_ranks)
            n0 = rng.randrange(4, 30)
            ncut = 0 if quiet else rng.choice((0, 1, 1, 2))
            cuts = sorted(rng.sample(range(1, n0), min(ncut, n0 - 1)))
            b = [0, *cuts]
            node = (node_ranks(home, num_ranks, ranks_per_node) if ranks_per_node
                    else range(num_ranks))
            sealed = [(rng.choice(node), a, c) for a, c in zip(b, [*cuts, n0])][:-1]
            live[nxt] = [home, n0 - 1, sealed]
            nxt += 1
        step = []
        for rid, st in live.items():
            st[1] += 1  # one more token (the one this step decodes)
            home, length, sealed = st
            tail = sealed[-1][2] if sealed else 0
            step.append((rid, home, length, tuple(sealed) + ((home, tail, length),)))
        rng.shuffle(step)
        out.append(step)
    return out
