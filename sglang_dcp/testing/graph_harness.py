"""Drive ``DcpAttnBackend`` through SGLang 0.5.21's decode call sequences on CPU ranks (gloo).

Per step every rank runs the same decode twice, eagerly and as a graph replay, and checks both
against a float64 reference:

- eager, as ``eager_runner._execute_decode``: ``init_forward_metadata(fb)``, then each layer's
  ``forward`` followed by ``StageBoundary.finish`` (a rank with no rows only reaches the latter);
- graph, as ``decode_cuda_graph_runner``: once per (batch size, variant) ``init_cuda_graph_state``,
  ``init_forward_metadata_out_graph(fb, in_capture=True)``, then under capture mode
  ``init_forward_metadata_in_graph`` and the layers; per replay the real rows are copied into
  the static inputs (padding rows keep stale values), ``out_graph(view)`` runs eagerly and the
  captured code runs again *in capture mode over the static tensors*: every Python decision is
  the capture's, as in a CUDA graph replay. The variant is ``graphs.DcpGraphVariants.select``'s.

``graph_scenario.TritonLikeInner`` stands in for SGLang's ``triton`` backend, which needs CUDA:
like it, it builds static ``kv_indptr``/``kv_indices`` from ``req_to_token`` and ``seq_lens`` in
``init_forward_metadata_out_graph`` and its ``forward`` reads only those.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import torch

from sglang_dcp.testing.graph_scenario import (
    D, FP8, H, HKV, KV_SCALE, LAYERS, MAX_LEN, NUM_REQS, SM, TritonLikeInner, kv_value, q_value,
    reference, scenario, store,
)  # fmt: skip


class _Pool:
    """This rank's KV pool: per layer ``[num_slots, HKV, D]``; slot 0 is the padding dummy."""

    def __init__(self, num_slots: int, dtype: torch.dtype) -> None:
        self.k = [torch.zeros(num_slots, HKV, D).to(dtype) for _ in range(LAYERS)]
        self.v = [torch.zeros(num_slots, HKV, D).to(dtype) for _ in range(LAYERS)]
        self.size, self.page_size, self.layer_num, self.start_layer = num_slots - 1, 1, LAYERS, 0

    def get_key_buffer(self, layer_id):
        return self.k[layer_id]

    def get_value_buffer(self, layer_id):
        return self.v[layer_id]


DECODE = SimpleNamespace(is_decode=lambda: True, is_idle=lambda: False,
                         is_decode_or_idle=lambda: True)  # fmt: skip
IDLE = SimpleNamespace(is_decode=lambda: False, is_idle=lambda: True,
                       is_decode_or_idle=lambda: True)  # fmt: skip
LAYER = [SimpleNamespace(layer_id=i, tp_q_head_num=H, qk_head_dim=D, v_head_dim=D, scaling=SM,
                         logit_cap=0, sliding_window_size=-1) for i in range(LAYERS)]  # fmt: skip


def _slot(rid: int, rank: int, num_ranks: int, token: int) -> int:
    return 1 + (rid * num_ranks + rank) * MAX_LEN + token


def run_rank(rank: int, num_ranks: int, init_method: str, dist_backend: str, steps: int,
             seed: int, capacity: int, out_path: str, kv_dtype: str = "float32",
             ranks_per_node: int = 0) -> None:  # fmt: skip
    """One rank of the harness (``exchange.spawn.run_ranks`` target); writes its findings, or
    its traceback to ``<out_path>.err`` (a peer's crash then reads as its own failure).
    ``ranks_per_node``: a server of several nodes whose split requests keep their shards on
    their home's node (node-scoped steps, the ``dcp<c>n`` variants); 0: one node."""
    import traceback

    try:
        _run_rank(rank, num_ranks, init_method, dist_backend, steps, seed, capacity, out_path,
                  kv_dtype, ranks_per_node)  # fmt: skip
    except BaseException:
        with open(out_path.format(rank=rank) + ".err", "w") as f:
            f.write(traceback.format_exc())
        raise


def _run_rank(rank, num_ranks, init_method, dist_backend, steps, seed, capacity, out_path,
              kv_dtype, ranks_per_node) -> None:  # fmt: skip
    """``kv_dtype``: ``float32`` or ``fp8_e4m3`` (an FP8 cache with per-layer scales)."""
    import json
    import os

    from sglang_dcp import env
    from sglang_dcp.exchange.comm import TorchDistCommunicator
    from sglang_dcp.exchange.route import part_ranks
    from sglang_dcp.exchange.spawn import init_rank
    from sglang_dcp.exchange.wire import capacity_buckets
    from sglang_dcp.sglang import backend, context, graphs
    from sglang_dcp.sglang.options import DcpOptions
    from sglang_dcp.sglang.step import StepPlan
    from sglang_dcp.sglang.step_build import build_step
    from sglang_dcp.types import Placement, Shard

    W = num_ranks
    os.environ[env.SERVE_OPTIONS_VAR] = DcpOptions(
        max_degree=W, max_guest_items=capacity, ranks_per_node=ranks_per_node or None).to_json()
    comm = TorchDistCommunicator(init_rank(rank, W, init_method, dist_backend))
    rows = NUM_REQS * 4 + 1
    dtype = FP8 if kv_dtype == "fp8_e4m3" else torch.float32
    pool = _Pool(1 + rows * W * MAX_LEN, dtype)
    runner = SimpleNamespace(
        req_to_token_pool=SimpleNamespace(req_to_token=torch.zeros(rows, MAX_LEN, dtype=torch.int32),
                                          size=rows - 1),
        token_to_kv_pool=pool, device="cpu", dtype=torch.float32,
    )  # fmt: skip
    be = object.__new__(backend.DcpAttnBackend)
    be._init_state(TritonLikeInner(runner), runner, num_ranks=W, num_q_heads=H, head_dim=D,
                   v_head_dim=D)  # fmt: skip
    be._scaling = dict.fromkeys(range(LAYERS), SM)
    be._kv_scales = {i: dict(k_scale=KV_SCALE, v_scale=KV_SCALE) for i in range(LAYERS)}
    from sglang_dcp.sglang.context import ctx

    ctx().backend = be
    state = SimpleNamespace(step=None, variant=None)
    context.current_step = lambda: state.step  # the backend's metadata calls and layers read it
    context.step_comm = lambda: comm
    graphs.capturing_variant = lambda: state.variant
    finish = backend.around_stage_finish

    MAXBS = 8
    be.init_cuda_graph_state(MAXBS, MAXBS)
    S = SimpleNamespace(rpi=torch.zeros(MAXBS, dtype=torch.long),
                        seq=torch.ones(MAXBS, dtype=torch.int32),
                        loc=torch.zeros(MAXBS, dtype=torch.long),
                        q=torch.zeros(LAYERS, MAXBS, H * D), k=torch.zeros(LAYERS, MAXBS, HKV, D),
                        v=torch.zeros(LAYERS, MAXBS, HKV, D))  # fmt: skip

    def layers(fb, q, k, v, n):
        outs = []
        for lay in LAYER:
            if n:
                outs.append(be.forward(q[lay.layer_id][:n], k[lay.layer_id][:n],
                                       v[lay.layer_id][:n], lay, fb).clone())  # fmt: skip
            finish(lambda *a: None, None, None, fb)
        return outs

    def static_fb(bs, pad=0):
        return SimpleNamespace(forward_mode=DECODE, req_pool_indices=S.rpi[:bs],
                               seq_lens=S.seq[:bs], seq_lens_cpu=S.seq[:bs].clone(),
                               out_cache_loc=S.loc[:bs], num_padding=pad, batch_size=bs)  # fmt: skip

    captured = {}
    variants = graphs.DcpGraphVariants(capacity_buckets(capacity), node_scope=bool(ranks_per_node))
    for bs in (8, 4, 2, 1):  # capture, largest first, every variant, in lockstep on every rank
        for variant in variants.capture_labels:
            fb = static_fb(bs)
            state.variant = variant  # named first, as decode_cuda_graph_runner does
            be.init_forward_metadata_out_graph(fb, in_capture=True)
            be.init_forward_metadata_in_graph(fb)
            layers(fb, S.q, S.k, S.v, bs)
            state.variant = None
            captured[(bs, variant)] = fb
    ptrs = static_ptrs(be)

    worst = {"eager": 0.0, "graph": 0.0}
    counts = {"graph_dcp": 0, "graph_plain": 0, "graph_node": 0, "eager_rounds": 0,
              "split_rows": 0, "dcp_buckets": []}  # fmt: skip
    for i, reqs in enumerate(scenario(W, steps, seed, ranks_per_node)):
        # KV: every token this rank holds now, the home's moved copies poisoned (NaN)
        placements, guest_slots, home = [], {}, []
        for rid, h, length, shards in reqs:
            p = Placement(str(rid), h, tuple(Shard(*s) for s in shards))
            split = len(part_ranks(p)) > 1
            if split:
                placements.append(p)
            for r, a, b in shards:
                for t in range(a, b):
                    if t == length - 1:
                        continue  # the new token: forward stores it
                    here = r == rank or (h == rank and not split)
                    if here or h == rank:
                        s = _slot(rid, rank, W, t)
                        for lay in range(LAYERS):
                            kk, vv = kv_value(rid, t, lay) if here else (float("nan"),) * 2
                            store(pool.k[lay], s, kk)
                            store(pool.v[lay], s, vv)
            if h == rank:
                home.append((rid, length))
                runner.req_to_token_pool.req_to_token[rid, :length] = torch.tensor(
                    [_slot(rid, rank, W, t) for t in range(length)], dtype=torch.int32)
            elif split and rank in part_ranks(p):
                guest_slots[str(rid)] = torch.tensor(
                    [_slot(rid, rank, W, t) for r, a, b in shards if r == rank
                     for t in range(a, b)], dtype=torch.long)  # fmt: skip
        plan = StepPlan(tuple(placements), ())
        fake = {str(rid): SimpleNamespace(kv=SimpleNamespace(req_pool_idx=rid)) for rid, _ in home}
        n = len(home)
        rpi = torch.tensor([rid for rid, _ in home], dtype=torch.long)
        seq = torch.tensor([ln for _, ln in home], dtype=torch.int32)
        loc = torch.tensor([_slot(rid, rank, W, ln - 1) for rid, ln in home], dtype=torch.long)
        q = torch.stack([torch.stack([q_value(rid, i, lay).reshape(-1) for rid, _ in home])
                         if n else torch.zeros(0, H * D) for lay in range(LAYERS)])  # fmt: skip
        kv = [[kv_value(rid, ln - 1, lay) for rid, ln in home] for lay in range(LAYERS)]
        k = torch.stack([torch.stack([x[0] for x in kl]) if n else torch.zeros(0, HKV, D)
                         for kl in kv])  # fmt: skip
        v = torch.stack([torch.stack([x[1] for x in kl]) if n else torch.zeros(0, HKV, D)
                         for kl in kv])  # fmt: skip
        ref = [torch.stack([reference(rid, ln, i, lay, dtype) for rid, ln in home]) if n else None
               for lay in range(LAYERS)]  # fmt: skip

        rows = {rid: (i, ln) for i, (rid, ln) in enumerate(home)}

        def mk_step(tag):
            if not plan.active:
                return None
            step = build_step(plan, rank=rank, num_ranks=W, home_reqs=fake,
                              guest_slots=guest_slots,
                              req_to_token=runner.req_to_token_pool.req_to_token,
                              capacity=capacity, tag=tag,
                              ranks_per_node=ranks_per_node or None)  # fmt: skip
            return replace(step, batch_rows=tuple(rows[k] for k in step.row_keys))  # the header's

        # eager (eager_runner._execute_decode); an idle rank only reaches StageBoundary.finish
        state.step = mk_step(2 * i + 1)
        fb = SimpleNamespace(forward_mode=DECODE if n else IDLE, req_pool_indices=rpi,
                             seq_lens=seq, seq_lens_cpu=seq.clone(), out_cache_loc=loc,
                             batch_size=n)  # fmt: skip
        if n:
            be.init_forward_metadata(fb)
        eager = layers(fb, q, k, v, n)
        counts["split_rows"] += state.step.num_rows if state.step else 0
        # graph replay, unless the step needs rounds (the decode-graph vote goes eager)
        state.step = mk_step(2 * i + 2)
        bs_all = max(1, max(sum(1 for r in reqs if r[1] == x) for x in range(W)))
        bs = next(b for b in (1, 2, 4, 8) if b >= bs_all)
        eager_only = state.step is not None and be.needs_eager(state.step)
        eager_only = bool(comm_max(comm, int(eager_only)))
        if eager_only:
            counts["eager_rounds"] += 1
            graph = None
        else:
            S.rpi[:n], S.seq[:n], S.loc[:n] = rpi, seq, loc
            S.seq[n:bs], S.loc[n:bs] = 1, 0  # padding: fill value, dummy slot; rpi stays stale
            S.q[:, :n], S.k[:, :n], S.v[:, :n] = q, k, v
            be.init_forward_metadata_out_graph(static_fb(bs, bs - n))
            variant = variants.select(None)
            bucket = graphs.bucket_of(variant)
            counts["graph_" + ("plain" if bucket is None else "dcp")] += 1
            counts["graph_node"] += int(graphs.node_scoped(variant))
            if bucket is not None and bucket not in counts["dcp_buckets"]:
                counts["dcp_buckets"].append(bucket)
            state.variant = variant  # replay: the captured code path, over the static tensors
            fbc = captured[(bs, variant)]
            be.init_forward_metadata_in_graph(fbc)
            graph = [o[:n] for o in layers(fbc, S.q, S.k, S.v, bs)]
            state.variant = None
        for lay in range(LAYERS) if n else ():
            worst["eager"] = max(worst["eager"], float((eager[lay].double() - ref[lay]).abs().max()))
            if graph is not None:
                worst["graph"] = max(worst["graph"],
                                     float((graph[lay].double() - ref[lay]).abs().max()))
        assert static_ptrs(be) == ptrs, f"rank {rank} step {i}: a static buffer moved"
    with open(out_path.format(rank=rank), "w") as f:
        json.dump({"worst": worst, "counts": counts}, f)


def static_ptrs(be) -> dict:
    """Addresses of every tensor a captured graph reads: each bucket's buffers, the row table,
    the inner backend's seq lens."""
    ex = be.ex
    out = {f"{c}.{k}": v for c, lay in ex.layouts.items() for k, v in lay.bufs.data_ptrs().items()}
    return dict(out, row=ex.row_slot.data_ptr(), seq=be._inner_seq.data_ptr())


def comm_max(comm, x: int) -> int:
    t = torch.tensor([x])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=comm.group)
    return int(t)
