"""The extend-mode exchange (prefill into shards) on ``W`` local gloo ranks against float64.

    python -m sglang_dcp.exchange.selfcheck --extend --world-size 3 --seed 0

Each rank runs the self-check's random attention stack (``selfcheck.Weights``) over a random
prefill-into-shards scenario (``extend_scenario.py``): every step, each live request runs one
chunk of its prompt (or one decode row: a one-row chunk) at its home; per layer the chunk's K/V
is written at home, its query rows go through the ``TileExchange`` built from
``extend_tiles.build_tile_route`` (each shard rank serves the chunk's rows as tiles of
``--tile-rows`` rows, non-causal over its shard; the home computes its own part, causal over its
prefix and the chunk, as tiles too), and the parts are merged by LSE. After the step the chunk's tokens that belong to
other ranks move there (``transfer_shards``); every free page is poisoned (NaN), so a read of
KV that left, or was never written, shows in the result. The parent replays the whole sequence
of each request causally in float64 and compares every row of every layer.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch

from sglang_dcp.exchange.comm import Communicator
from sglang_dcp.exchange.extend_scenario import make_extend_scenario
from sglang_dcp.exchange.extend_tiles import build_tile_route
from sglang_dcp.exchange.kv_pool import KVPool
from sglang_dcp.exchange.selfcheck import TOLERANCE, Weights, run_worker
from sglang_dcp.exchange.spawn import run_ranks
from sglang_dcp.exchange.tile_exchange import TileExchange, TileShape
from sglang_dcp.exchange.transfer import transfer_shards


@dataclass(frozen=True, slots=True)
class ExtendConfig:
    world_size: int
    seed: int
    num_requests: int = 0  # 0: world_size + 2
    num_layers: int = 3
    hidden: int = 32
    num_q_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    page_size: int = 4
    chunk_pages: int = 2  # chunk = chunk_pages * page_size query rows
    max_pages: int = 3  # per sealed shard
    decode_steps: int = 2  # one-row chunks after the prompt
    capacity: int = 0  # query rows per peer per round; 0: enough for one round
    tile_rows: int = 3  # rows per tile: small, so chunks take several tiles
    impl: str = "auto"
    device: str = "cpu"
    backend: str = "gloo"

    # the toy stack (toy_stack.Weights) is shared with the decode self-check: GQA here
    mla = False

    @property
    def v_head_dim(self) -> int:
        return self.head_dim

    def scenario(self):
        return make_extend_scenario(
            self.world_size, self.seed, num_requests=self.num_requests,
            page_size=self.page_size, chunk_pages=self.chunk_pages, max_pages=self.max_pages,
            decode_steps=self.decode_steps,
        )  # fmt: skip


def exchange_shape(cfg: ExtendConfig, steps, num_slots: int) -> TileShape:
    """One shape for the whole run, the same on every rank (derived from the scenario alone)."""
    W = cfg.world_size
    routes = [build_tile_route(s.chunks, rank=r, num_ranks=W, tile_rows=cfg.tile_rows)
              for s in steps for r in range(W)]  # fmt: skip
    rows = max(max(rt.num_rows, rt.max_stream) for rt in routes)
    return TileShape(
        num_ranks=W, max_rows=max(1, rows), capacity=cfg.capacity or max(1, rows),
        num_q_heads=cfg.num_q_heads, head_dim=cfg.head_dim, v_head_dim=cfg.head_dim,
        max_kv_slots=num_slots, tile_rows=cfg.tile_rows,
    )  # fmt: skip


def _chunk_slots(pool: KVPool, rid: str, start: int, n: int) -> None:
    """Room at home for tokens ``[start, start + n)``: grow the shard ending at ``start``."""
    for key in pool.keys():
        if key[0] == rid and key[1] + pool.num_tokens(key) == start:
            pool.extend(key, n)
            return
    pool.allocate((rid, start), n)


def _poison(pool: KVPool) -> None:
    ps = pool.page_size
    free = torch.tensor(pool.free_pages(), dtype=torch.long)
    slots = (free[:, None] * ps + torch.arange(ps)).flatten().to(pool.k.device)
    pool.k[:, slots] = math.nan
    pool.v[:, slots] = math.nan


def run_rank(rank: int, cfg: ExtendConfig, comm: Communicator, out: str) -> None:
    W = cfg.world_size
    reqs, steps = cfg.scenario()
    dev = torch.device("cuda", torch.cuda.current_device()) if cfg.device == "cuda" else \
        torch.device(cfg.device)
    w = Weights(cfg).to(dev)
    pages = sum(-(-r.length // cfg.page_size) + r.length for r in reqs) + 2
    pool = KVPool(num_layers=cfg.num_layers, num_pages=pages, page_size=cfg.page_size,
                  num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, device=dev)
    _poison(pool)
    shape = exchange_shape(cfg, steps, pool.k.shape[1])
    ex = TileExchange(shape, dev)
    from sglang_dcp import kernels

    attention = functools.partial(kernels.prefix_attention, impl=cfg.impl)
    L, Hq, Hkv, D = cfg.num_layers, cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim
    results: dict[tuple[str, int], torch.Tensor] = {}
    stats = {"rows": 0, "guest_rows": 0, "ships": 0, "max_rounds": 0, "kv_tiles": 0,
             "kv_ideal": 0, "kv_per_row": 0}  # fmt: skip
    for st in steps:
        mine = [c for c in st.chunks if c.home_rank == rank]
        for c in mine:
            _chunk_slots(pool, c.rid, c.start, c.num_rows)
        slot_map = {rid: torch.tensor(s, dtype=torch.long, device=dev)
                    for rid, s in pool.slot_map().items()}  # fmt: skip
        route = build_tile_route(st.chunks, rank=rank, num_ranks=W, tile_rows=cfg.tile_rows)
        ex.load(route, home_slots=[slot_map[c.rid] for c in route.home], guest_slots=slot_map)
        stats["max_rounds"] = max(stats["max_rounds"], ex.rounds)
        stats["guest_rows"] += sum(g.rows for r in route.recv for g in r)
        for k, v in route.kv_reads().items():
            stats[f"kv_{k}"] += v
        who = [(c.rid, c.start + i) for c in route.home for i in range(c.rows)]
        n = len(who)
        x = torch.stack([w.x0(rid, t) for rid, t in who]).to(dev) if n else \
            torch.zeros(0, cfg.hidden, device=dev)
        loc = torch.cat([slot_map[c.rid][-c.num_rows:] for c in mine]) if n else \
            torch.zeros(0, dtype=torch.long, device=dev)
        xi = torch.arange(n, device=dev)
        attn = torch.zeros(n, L, Hq, D, device=dev)
        for l in range(L):
            pool.k[l].index_copy_(0, loc, (x @ w.wk[l]).view(n, Hkv, D))
            pool.v[l].index_copy_(0, loc, (x @ w.wv[l]).view(n, Hkv, D))
            ex.scatter_rows((x @ w.wq[l]).view(n, Hq, D), xi)
            o = ex.run(comm, pool.k[l], pool.v[l], sm_scale=1 / math.sqrt(D),
                       attention=attention)[:n]  # fmt: skip
            attn[:, l] = o
            x = x + o.reshape(n, Hq * D) @ w.wo[l]
        for i, key in enumerate(who):
            results[key] = attn[i].to("cpu", copy=True)
        stats["rows"] += n
        for r in transfer_shards(comm, pool, st.ships):
            if not r.ok:
                raise RuntimeError(f"step {st.t}: ship {r.move} failed: {r.reason}")
        stats["ships"] += len(st.ships)
        for rid in st.finishes:
            pool.free_request(rid)
        _poison(pool)
    torch.save({"results": results, "stats": stats}, os.path.join(out, f"rank{rank}.pt"))
    comm.barrier()


def _worker(rank: int, world_size: int, init_method: str, backend: str, cfg_d: dict, out: str):
    run_worker(rank, world_size, init_method, backend, ExtendConfig(**cfg_d), out, run_rank)


def collect_results(cfg: ExtendConfig, timeout_s: float = 300) -> tuple[dict, dict]:
    """((rid, token) -> attention rows [num_layers, num_q_heads, head_dim], run statistics)."""
    with tempfile.TemporaryDirectory(prefix="dcp-extend-") as out:
        try:
            run_ranks(_worker, cfg.world_size, asdict(cfg), out, backend=cfg.backend,
                      timeout_s=timeout_s)
        except Exception as e:
            errs = sorted(f for f in os.listdir(out) if f.startswith("error"))
            detail = "".join(open(os.path.join(out, f)).read() for f in errs)
            raise RuntimeError(f"extend selfcheck ranks failed:\n{detail or e}") from None
        results, stats = {}, {}
        for r in range(cfg.world_size):
            got = torch.load(os.path.join(out, f"rank{r}.pt"))
            results.update(got["results"])
            for k, v in got["stats"].items():
                stats[k] = max(stats.get(k, 0), v) if k in ("max_rounds", "ships") else \
                    stats.get(k, 0) + v
    return results, stats


def reference_errors(cfg: ExtendConfig, results: dict) -> tuple[float, str]:
    """Each request's whole sequence through the stack, causal, in float64; (max relative
    error over rows and layers, where)."""
    w = Weights(cfg)
    wq, wk, wv, wo = ([t.double() for t in ts] for ts in (w.wq, w.wk, w.wv, w.wo))
    Hq, Hkv, D, G = cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_q_heads // \
        cfg.num_kv_heads
    worst, where = 0.0, "no outputs"
    for r in cfg.scenario()[0]:
        rid, T = r.placement.rid, r.length
        x = torch.stack([w.x0(rid, t) for t in range(T)]).double()
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        for l in range(cfg.num_layers):
            q, k, v = (x @ wq[l]).view(T, Hkv, G, D), (x @ wk[l]).view(T, Hkv, D), \
                (x @ wv[l]).view(T, Hkv, D)
            s = torch.einsum("thgd,nhd->thgn", q, k) / math.sqrt(D)
            s = s.masked_fill(~mask[:, None, None, :], -math.inf)
            o = torch.einsum("thgn,nhd->thgd", torch.softmax(s, -1), v).reshape(T, Hq, D)
            for t in range(T):
                got = results.get((rid, t))
                if got is None:
                    return math.inf, f"no output for {rid} token {t} (home {r.placement.home_rank})"
                err = float((got[l].double() - o[t]).abs().max() / o[t].abs().max().clamp_min(
                    1e-30))
                if not err <= worst:
                    worst = err if not math.isnan(err) else math.inf
                    where = (f"request {rid} token {t} layer {l} (prompt {r.prompt_len}, shards "
                             f"{[(s.rank, s.start, s.end) for s in r.placement.shards]})")
            x = x + o.reshape(T, -1) @ wo[l]
    return worst, where


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sglang_dcp.exchange.selfcheck --extend",
        description=__doc__.split("\n\n")[0] + " Prints max_rel_err=<value> last.",
    )
    ap.add_argument("--world-size", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--requests", type=int, default=0, help="requests (0: world size + 2)")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--chunk-pages", type=int, default=2, help="pages of 4 tokens per chunk")
    ap.add_argument("--capacity", type=int, default=0, help="rows per peer per round (0: auto)")
    ap.add_argument("--tile-rows", type=int, default=3, help="query rows per tile")
    ap.add_argument("--impl", choices=["auto", "torch", "triton"], default="auto")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: gloo ranks share the GPU, all-to-alls through host copies")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    cfg = ExtendConfig(a.world_size, a.seed, num_requests=a.requests, num_layers=a.layers,
                       chunk_pages=a.chunk_pages, capacity=a.capacity, impl=a.impl,
                       tile_rows=a.tile_rows,
                       device=a.device)
    results, stats = collect_results(cfg, timeout_s=a.timeout)
    err, where = reference_errors(cfg, results)
    print(f"extend world_size={cfg.world_size} seed={cfg.seed} layers={cfg.num_layers} "
          f"rows={stats['rows']} guest_rows={stats['guest_rows']} ships={stats['ships']} "
          f"max_rounds={stats['max_rounds']} tile_rows={cfg.tile_rows} "
          f"kv_reads_tiles={stats['kv_tiles']} kv_reads_ideal={stats['kv_ideal']} "
          f"kv_reads_per_row={stats['kv_per_row']}")
    ok = err <= TOLERANCE
    if not ok:
        print(f"FAILED: relative error {err:.3e} > {TOLERANCE:g} at {where}", file=sys.stderr)
    print(f"max_rel_err={err:.3e}")
    return 0 if ok else 1
