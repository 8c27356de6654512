"""The static-graph decode runner: buckets of (home rows, per-peer capacity), one set of static
buffers per bucket, one captured CUDA graph per bucket on GPU, the same buffers run eagerly on CPU.

Per step: build this rank's route from the placements, pick the bucket, load inputs and route
metadata into the bucket's buffers in place, then replay (or run) the model's forward, whose
attention layers call ``attend(layer, q)``. The per-peer capacity is chosen from numbers every
rank derives from the placements alone, so all ranks run collectives of the same size. A step
whose busiest peer pair exceeds the largest capacity runs eagerly in several rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from sglang_dcp.exchange.buffers import ExchangeBuffers, ExchangeShape, build_step_meta
from sglang_dcp.exchange.comm import Communicator
from sglang_dcp.exchange.exchange import (
    AttentionFn,
    MergeFn,
    default_kernels,
    exchange_attention,
    merge_rounds,
)
from sglang_dcp.exchange.kv_pool import KVPool
from sglang_dcp.exchange.route import RankRoute, build_rank_route, max_pair_items, split_rounds
from sglang_dcp.types import Placement

Attend = Callable[[int, torch.Tensor], torch.Tensor]


class DecodeModel(Protocol):
    """What the runner drives. ``make_io`` returns static tensors whose dim 0 is the row."""

    def make_io(self, max_local: int, device: torch.device) -> dict[str, torch.Tensor]: ...

    def forward(self, io: dict[str, torch.Tensor], attend: Attend) -> None: ...


@dataclass(frozen=True, slots=True, order=True)
class Bucket:
    max_local: int
    capacity: int


def _pow2_upto(n: int) -> list[int]:
    out, x = [], 1
    while x < n:
        out.append(x)
        x *= 2
    return out + [n]


def capture_buckets(max_local: int, max_capacity: int) -> tuple[Bucket, ...]:
    """Powers of two up to each maximum (the maxima included), largest first: capture order, so
    later (smaller) graphs reuse the first graph's memory pool."""
    return tuple(
        sorted(
            (Bucket(b, c) for b in _pow2_upto(max_local) for c in _pow2_upto(max_capacity)),
            reverse=True,
        )
    )


def pick_bucket(buckets: Sequence[Bucket], batch: int, pair_items: int) -> tuple[Bucket, int]:
    """(bucket, rounds) for a step. ``pair_items`` is global, so every rank picks the same
    capacity; ``max_local`` is per rank. Past the largest batch, a one-off bucket is returned."""
    caps = sorted({b.capacity for b in buckets})
    cap = next((c for c in caps if c >= pair_items), caps[-1])
    rounds = max(1, -(-pair_items // cap))
    locals_ = sorted(b.max_local for b in buckets if b.capacity == cap)
    local = next((b for b in locals_ if b >= batch), None)
    return Bucket(batch if local is None else local, cap), rounds


class DecodeRunner:
    def __init__(
        self,
        *,
        comm: Communicator,
        pool: KVPool,
        model: DecodeModel,
        num_q_heads: int,
        head_dim: int,
        v_head_dim: int,
        sm_scale: float,
        buckets: Sequence[Bucket],
        kernels: tuple[AttentionFn, MergeFn] | None = None,
        num_kv_splits: int | None = None,
        use_cuda_graph: bool = False,
        check_headers: bool = False,
    ) -> None:
        self.comm, self.pool, self.model = comm, pool, model
        self.sm_scale, self.num_kv_splits = sm_scale, num_kv_splits
        self.attention, self.merge = kernels or default_kernels()
        self.use_cuda_graph = use_cuda_graph
        self.check_headers = check_headers and not use_cuda_graph
        self.device = pool.k.device
        self._shape = dict(
            num_ranks=comm.world_size,
            num_q_heads=num_q_heads,
            head_dim=head_dim,
            v_head_dim=v_head_dim,
            max_kv_slots=pool.num_slots,
            dtype=pool.k.dtype,
        )
        self.buckets = tuple(sorted(set(buckets), reverse=True))
        self.buffers: dict[Bucket, ExchangeBuffers] = {}
        self.io: dict[Bucket, dict[str, torch.Tensor]] = {}
        for b in self.buckets:
            self._alloc(b)
        self.graphs: dict[Bucket, torch.cuda.CUDAGraph] = {}
        self.steps = 0
        self.last_bucket: Bucket | None = None
        self.last_rounds = 0

    def _make(self, b: Bucket) -> tuple[ExchangeBuffers, dict[str, torch.Tensor]]:
        shape = ExchangeShape(max_local=b.max_local, capacity=b.capacity, **self._shape)
        return ExchangeBuffers(shape, self.device), self.model.make_io(b.max_local, self.device)

    def _alloc(self, b: Bucket) -> None:
        self.buffers[b], self.io[b] = self._make(b)

    def _attend_fn(self, bufs: ExchangeBuffers) -> Attend:
        def attend(layer: int, q: torch.Tensor) -> torch.Tensor:
            if q.data_ptr() != bufs.q_in.data_ptr():
                bufs.q_in.copy_(q)
            exchange_attention(
                bufs,
                self.comm,
                self.pool.k[layer],
                self.pool.v[layer],
                sm_scale=self.sm_scale,
                attention=self.attention,
                merge=self.merge,
                num_kv_splits=self.num_kv_splits,
            )
            if self.check_headers:
                bufs.check_headers(self.comm.rank)
            return bufs.out

        return attend

    def _rounds_attend_fn(self, bufs: ExchangeBuffers, metas) -> Attend:
        single = self._attend_fn(bufs)

        def attend(layer: int, q: torch.Tensor) -> torch.Tensor:
            q = q.clone()  # q may alias q_in, which each round reloads
            outs = []
            for meta in metas:
                bufs.copy_from(meta)
                single(layer, q)
                outs.append((bufs.out.clone(), bufs.out_lse.clone()))
            return merge_rounds(outs, self.merge)[0]

        return attend

    def capture(self) -> None:
        """Capture one CUDA graph per bucket, largest first, sharing one memory pool.

        NOTE: every rank must capture the same buckets in the same order (the graphs contain
        collectives), and graphs must be destroyed before the process group.
        """
        assert self.device.type == "cuda", "CUDA graphs need CUDA tensors"
        mempool = torch.cuda.graph_pool_handle()
        for b in self.buckets:
            bufs, io = self.buffers[b], self.io[b]
            empty = RankRoute(
                rank=self.comm.rank,
                num_ranks=self.comm.world_size,
                home_rids=(),
                local_slots=(),
                send=((),) * self.comm.world_size,
                recv=((),) * self.comm.world_size,
                merge=(),
            )
            bufs.copy_from(build_step_meta(empty, bufs.shape))
            attend = self._attend_fn(bufs)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up allocators and autotuning outside the capture
                    self.model.forward(io, attend)
            torch.cuda.current_stream().wait_stream(stream)
            self.comm.barrier()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=mempool):
                self.model.forward(io, attend)
            self.graphs[b] = g
        torch.cuda.synchronize()

    def step(
        self, placements: Sequence[Placement], inputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One decode step. ``inputs[name]: [batch, ...]`` rows in home batch order (placements
        homed here, in order); returns every io tensor sliced to ``[batch, ...]``."""
        W = self.comm.world_size
        route = build_rank_route(
            placements, rank=self.comm.rank, num_ranks=W, local_slots=self.pool.slot_map()
        )
        bucket, rounds = pick_bucket(self.buckets, route.batch_size, max_pair_items(placements, W))
        if bucket in self.buffers:
            bufs, io = self.buffers[bucket], self.io[bucket]
        else:  # batch beyond every bucket: buffers for this step only (not kept), eager
            bufs, io = self._make(bucket)
        B = route.batch_size
        for name, t in inputs.items():
            io[name][:B].copy_(t)
            io[name][B:].zero_()  # padded rows: zero inputs, KV written to the dummy slot 0
        tags = [(self.steps * 64 + k) % 2**31 for k in range(rounds)]
        rts = split_rounds(route, capacity=bucket.capacity, rounds=rounds)
        metas = [build_step_meta(r, bufs.shape, tag=t) for r, t in zip(rts, tags)]
        if rounds == 1:
            bufs.copy_from(metas[0])
            if bucket in self.graphs:
                self.graphs[bucket].replay()
            else:
                self.model.forward(io, self._attend_fn(bufs))
        else:
            self.model.forward(io, self._rounds_attend_fn(bufs, metas))
        self.steps += 1
        self.last_bucket, self.last_rounds = bucket, rounds
        return {name: t[:B] for name, t in io.items()}
