"""One rank of the exchange self-check on the server's own runtime (``--pool sglang``).

What the server runs, minus the scheduler: SGLang's KV pool (``MHATokenToKVPool`` or, with
``--attention mla``, ``MLATokenToKVPool``), its allocator (``TokenToKVPoolAllocator``, or
``PagedTokenToKVPoolAllocator`` with ``--page-size > 1``) and ``ReqToTokenPool``; shard moves
through ``shipping.ship`` (the adapter ``kv_adapter.SGLangKVPool``, ``transfer_shards``, the
staging reserved by ``move_reserve``); each step's route built by ``step_build.build_step`` from a
``StepPlan`` and laid out in one ``StaticExchange`` (``load``, ``row_index``/``scatter_rows``/
``run``/``gather_rows`` per layer, as ``backend.py`` calls them). Unsplit rows get plain local
attention, standing in for SGLang's own backend. The toy model and the float64 reference are
``exchange.toy_stack``'s; the scenario is ``exchange.scenario``'s.

Each home holds a request's whole row from its arrival (prompt plus every decode step left,
whole pages), as SGLang's ``req_to_token`` does; a shipped range's slots go back to the home's
allocator, a guest's come from its own.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import torch

from sglang_dcp.exchange.buffers import ExchangeShape
from sglang_dcp.exchange.exchange import default_kernels
from sglang_dcp.exchange.route import max_pair_items, tokens_on
from sglang_dcp.exchange.scenario import make_scenario
from sglang_dcp.exchange.static import StaticExchange
from sglang_dcp.exchange.toy_stack import CheckConfig, Weights
from sglang_dcp.exchange.wire import HDR_COUNT, HDR_TAG
from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang.layout import KvLayout, subtract
from sglang_dcp.sglang.step import StepPlan


def make_pools(cfg: CheckConfig, num_tokens: int, device: str):
    """SGLang's (KV pool, allocator, req_to_token pool) for ``cfg`` with ``num_tokens`` slots."""
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool, ReqToTokenPool

    page, L, dt = (cfg.page_size if cfg.paged else 1), cfg.num_layers, torch.float32
    size = -(-num_tokens // page) * page
    if cfg.mla:
        kv = MLATokenToKVPool(size, page, dt, cfg.v_head_dim, cfg.head_dim - cfg.v_head_dim, L,
                              device, False)  # fmt: skip
    else:
        kv = MHATokenToKVPool(size, page, dt, cfg.num_kv_heads, cfg.head_dim, L, device, False)
    if page == 1:
        alloc = TokenToKVPoolAllocator(size, dt, device, kv, False)
    else:
        alloc = PagedTokenToKVPoolAllocator(size, page, dt, device, kv, False)
    return kv, alloc


def layer_kv(kv, cfg: CheckConfig, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k [slots, Hkv, D], v [slots, Hkv, Dv])`` of one layer; MLA: V is the latent's head."""
    if cfg.mla:
        k = kv.kv_buffer[layer]
        return k, k[..., : cfg.v_head_dim]
    return kv.k_buffer[layer], kv.v_buffer[layer]


def _local_attention(q, k, v, rows, *, sm_scale):
    """SGLang's own attention for unsplit rows (a stand-in): ``q [n, H, D]``, ``rows[i]``:
    row i's slots ``[len]``; returns ``[n, H, Dv]``."""
    out = []
    for qi, slots in zip(q, rows):
        ki, vi = k[slots].float(), v[slots].float()  # [len, Hkv, D]
        g = qi.shape[0] // ki.shape[1]
        ki, vi = ki.repeat_interleave(g, dim=1), vi.repeat_interleave(g, dim=1)
        s = torch.einsum("hd,nhd->hn", qi.float(), ki) * sm_scale
        out.append(torch.einsum("hn,nhd->hd", torch.softmax(s, -1), vi).to(q.dtype))
    return torch.stack(out) if out else q.new_zeros(0, q.shape[1], v.shape[-1])


def run_rank(rank: int, cfg: CheckConfig, comm, out: str) -> None:
    from sglang_dcp.sglang import move_reserve
    from sglang_dcp.sglang.entries import HomeEntry
    from sglang_dcp.sglang.ledger import RankLedger
    from sglang_dcp.sglang.shipping import ship
    from sglang_dcp.sglang.step_build import build_step

    W, page = cfg.world_size, cfg.page_size
    steps = make_scenario(W, cfg.steps, cfg.seed, page_size=page, max_pages=cfg.max_pages)
    dev = f"cuda:{torch.cuda.current_device()}" if cfg.device == "cuda" else cfg.device
    w = Weights(cfg).to(torch.device(dev))

    def row_len(p, t: int) -> int:  # the home's row: prompt + the decode steps left, whole pages
        return -(-(p.shards[-1].end + cfg.steps - t) // page) * page

    arrivals = [(st.t, p) for st in steps for p in st.arrivals]
    kv, alloc = make_pools(cfg, sum(row_len(p, t) for t, p in arrivals) + page, dev)
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

    max_len = max(row_len(p, t) for t, p in arrivals)
    req_pool = ReqToTokenPool(len(arrivals) + 1, max_len, dev, False)
    req_to_token = req_pool.req_to_token
    move_reserve.reserve(dev, 1)
    rt = SimpleNamespace(
        rank=rank, comm=comm, scheduler=SimpleNamespace(token_to_kv_pool_allocator=alloc),
        home={}, guests={}, ledger=RankLedger(rank, send=lambda inbox, m: None),
        num_steps=0,
    )  # fmt: skip
    runner = SimpleNamespace(token_to_kv_pool=kv, req_to_token_pool=req_pool)
    cap = cfg.capacity or max(1, max(max_pair_items(s.placements, W) for s in steps))
    shape = ExchangeShape(
        num_ranks=W, num_q_heads=cfg.num_q_heads, head_dim=cfg.head_dim,
        v_head_dim=cfg.v_head_dim, max_kv_slots=kv.size + page + 1, dtype=torch.float32,
        max_local=len(arrivals) + 1, capacity=cap,
    )  # fmt: skip
    ex = StaticExchange(shape, dev, num_row_keys=len(arrivals) + 1)
    attention, merge = default_kernels(cfg.impl)
    sm_scale = 1 / math.sqrt(cfg.head_dim)
    def addresses() -> dict:  # nothing a captured graph reads may move
        out = {k: v.data_ptr() for k, v in vars(ex.bufs).items() if isinstance(v, torch.Tensor)}
        out["row_slot"] = ex.row_slot.data_ptr()
        for l in range(cfg.num_layers):
            out[("kv", l)] = tuple(t.data_ptr() for t in layer_kv(kv, cfg, l))
        return out

    ptrs = addresses()
    rows: dict[str, int] = {}  # rid -> req_to_token row at its home
    live: dict[str, object] = {}  # rid -> its placement at the last step
    alloc_len: dict[str, int] = {}
    results: dict[tuple[int, str], torch.Tensor] = {}
    graphs: dict[int, torch.cuda.CUDAGraph] = {}  # layer -> its captured exchange (--cuda-graph)
    stats = {"max_rounds": 0, "moves": 0, "guest_items": 0}
    for st in steps:
        for rid in st.finishes:  # the home frees what it holds of the row; guests their slots
            p = live.pop(rid)
            if p.home_rank == rank:
                away = [(s.start, s.end) for s in p.shards if s.rank != rank]
                for a, b in subtract([(0, alloc_len[rid])], away):
                    alloc.free(req_to_token[rows[rid], a:b].to(torch.long))
                del rt.home[rid]
            g = rt.guests.pop(rid, None)
            if g is not None:
                alloc.free(g.slots)
        moves, homes = [], {}
        for p in st.arrivals:  # prefill at home, then ship the sealed shards
            homes[p.rid] = p.home_rank
            rows[p.rid] = idx = len(rows) + 1
            if p.home_rank == rank:
                n, alloc_len[p.rid] = p.shards[-1].end, row_len(p, st.t)
                slots = alloc.alloc(alloc_len[p.rid])
                req_to_token[idx, : slots.numel()] = slots.to(req_to_token.dtype)
                for l in range(cfg.num_layers):
                    k_buf, v_buf = layer_kv(kv, cfg, l)
                    k, v = w.prompt_kv(p.rid, l, n)
                    k_buf[slots[:n]] = k.to(dev)
                    if not cfg.mla:
                        v_buf[slots[:n]] = v.to(dev)
                req = SimpleNamespace(rid=p.rid, kv=SimpleNamespace(req_pool_idx=idx), dcp=None)
                rt.home[p.rid] = HomeEntry(req, KvLayout.of(p))
            moves += [Migration(p.rid, p.home_rank, s.rank, s.start, s.end)
                      for s in p.shards[:-1] if s.rank != p.home_rank]  # fmt: skip
        homes.update({p.rid: p.home_rank for p in live.values()})
        stats["moves"] += len(moves) + len(st.migrations)
        for batch in (moves, list(st.migrations)):  # a migration may move a range shipped now
            if batch and ship(rt, batch, runner, homes):
                raise RuntimeError(f"step {st.t}: a shard move failed: {batch}")
            for m in batch:
                if m.rid in rt.home:
                    rt.home[m.rid].shipped = True
        live.update({p.rid: p for p in st.placements})
        mine = [p for p in st.placements if p.home_rank == rank]
        results.update(_decode(
            st, mine, rank=rank, cfg=cfg, w=w, kv=kv, ex=ex, comm=comm, rows=rows,
            req_to_token=req_to_token, rt=rt, build_step=build_step, cap=cap, dev=dev,
            kernels=(attention, merge), sm_scale=sm_scale, stats=stats, graphs=graphs,
        ))  # fmt: skip
        stats["guest_items"] += sum(
            1 for p in st.placements if p.home_rank != rank and tokens_on(p, rank) > 0
        )
        if addresses() != ptrs:
            raise RuntimeError(f"step {st.t}: static exchange buffers moved")
    torch.save({"results": results, "stats": stats}, os.path.join(out, f"rank{rank}.pt"))
    comm.barrier()


def _check_headers(ex, route, tag: int) -> None:
    """The counts and tags that arrived are what the route expects from each peer (eager
    debugging: reads device memory, so never inside a captured graph)."""
    b = ex.bufs
    got_q = b.q_recv_hdr[:, HDR_COUNT].tolist()
    got_r = b.r_recv_hdr[:, HDR_COUNT].tolist()
    want_q, want_r = [len(x) for x in route.recv], [len(x) for x in route.send]
    if got_q != want_q or got_r != want_r:
        raise RuntimeError(
            f"rank {route.rank}: route mismatch: received {got_q} queries (expected {want_q}) "
            f"and {got_r} outputs (expected {want_r}) per peer"
        )
    tags = torch.cat([b.q_recv_hdr[:, HDR_TAG], b.r_recv_hdr[:, HDR_TAG]]).tolist()
    if any(t != tag for t in tags):
        raise RuntimeError(f"rank {route.rank}: peers are at tags {tags}, expected {tag}")


def _capture(run, comm):
    """A CUDA graph of one layer's one-round exchange (``run``), as the server's decode graphs
    hold it: it reads only the static buffers ``StaticExchange.load`` rewrites in place. Every
    rank captures at the same (step, layer): active steps are the same everywhere."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm up allocators and autotuning outside the capture
            run()
    torch.cuda.current_stream().wait_stream(side)
    comm.barrier()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run()
    return g


def _decode(st, mine, *, rank, cfg, w, kv, ex, comm, rows, req_to_token, rt, build_step, cap,
            dev, kernels, sm_scale, stats, graphs) -> dict:  # fmt: skip
    """One decode step of the toy stack on this rank: ``mine`` are the placements homed here
    (the batch, in order). Split rows go through the exchange, the rest attend locally."""
    attention, merge = kernels
    plan = StepPlan(tuple(st.placements), ())
    step = None
    if plan.active:
        rt.num_steps += 1
        step = build_step(
            plan, rank=rank, num_ranks=cfg.world_size,
            home_reqs={rid: h.req for rid, h in rt.home.items()},
            guest_slots={rid: g.slots for rid, g in rt.guests.items()},
            req_to_token=req_to_token, capacity=cap, tag=rt.num_steps,
        )  # fmt: skip
        ex.load(step.route, rounds=step.rounds, tag=step.tag, row_keys=step.row_keys)
        stats["max_rounds"] = max(stats["max_rounds"], step.rounds)
    B = len(mine)
    keys = torch.tensor([rows[p.rid] for p in mine], dtype=torch.long).to(dev)
    loc = torch.stack([req_to_token[rows[p.rid], p.shards[-1].end - 1] for p in mine]).to(
        torch.long) if B else torch.zeros(0, dtype=torch.long, device=dev)  # fmt: skip
    x = torch.stack([w.x0(p.rid, st.t) for p in mine]).to(dev) if B else None
    here = [torch.cat([req_to_token[rows[p.rid], s.start : s.end] for s in p.shards
                       if s.rank == rank]).to(torch.long) for p in mine]  # fmt: skip
    attn = []
    for l in range(cfg.num_layers):
        k_buf, v_buf = layer_kv(kv, cfg, l)
        if B:
            k, v = w.new_kv(x, l)
            k_buf.index_copy_(0, loc, k)
            if not cfg.mla:  # MLA: V is a view of the K just written
                v_buf.index_copy_(0, loc, v)
            q = (x @ w.wq[l]).view(B, cfg.num_q_heads, cfg.head_dim)
            o = _local_attention(q, k_buf, v_buf, here, sm_scale=sm_scale)
        else:
            q = torch.zeros(0, cfg.num_q_heads, cfg.head_dim, device=dev)
            o = torch.zeros(0, cfg.num_q_heads, cfg.v_head_dim, device=dev)
        if step is not None:  # every rank joins every layer's exchange of an active step
            xi = ex.row_index(keys)
            ex.scatter_rows(q, xi)
            def run(k_buf=k_buf, v_buf=v_buf):
                return ex.run(comm, k_buf, v_buf, sm_scale=sm_scale, attention=attention,
                              merge=merge)  # fmt: skip

            if cfg.cuda_graph and step.rounds == 1:  # the layer's exchange, captured once
                if l not in graphs:
                    graphs[l] = _capture(run, comm)
                graphs[l].replay()
                merged = ex.bufs.out
            else:
                merged = run()
                if step.rounds == 1:
                    _check_headers(ex, step.route, step.tag)
            H, Dv = cfg.num_q_heads, cfg.v_head_dim
            o = ex.gather_rows(o.reshape(B, H * Dv), xi, merged).view(B, H, Dv)
        attn.append(o)
        if B:
            x = x + o.reshape(B, cfg.num_q_heads * cfg.v_head_dim) @ w.wo[l]
    return {(st.t, p.rid): torch.stack([a[i] for a in attn]).to("cpu", copy=True)
            for i, p in enumerate(mine)}  # fmt: skip
