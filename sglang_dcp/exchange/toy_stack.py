"""The self-check's model: a random multi-layer attention stack, and its float64 reference.

Per layer: q/k/v projections of the residual stream, the new K/V appended at the token's slot,
attention, a residual output projection. Two geometries (``CheckConfig.mla``):

- GQA: ``q [H, D]``, ``k``/``v`` ``[Hkv, D]`` in separate pool buffers;
- MLA (SGLang's absorbed DeepSeek path): ``q [H, D]`` with ``D = kv_lora_rank + rope`` (the
  absorbed ``[q_nope W_UK ; q_pe]``: a linear map of the stream, so a random projection stands
  for it), one latent KV row ``[1, D]`` per token, V the latent's first ``Dv = kv_lora_rank``
  columns (V is a *view* of K, as in SGLang's ``MLATokenToKVPool``), latent
  output ``[H, Dv]`` merged across ranks before the output projection (W_UV o_proj).

The ranks run it over SGLang's own pools (``sglang/selfcheck_rank.py``): per layer ``k [num_slots,
Hkv, D]``, ``v [num_slots, Hkv, Dv]``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from sglang_dcp.exchange.scenario import make_scenario

MLA_KV_LORA_RANK, MLA_ROPE_DIM = 32, 16  # the tiny DeepSeek-V3's (sglang_dcp/tiny_deepseek.py)


@dataclass(frozen=True, slots=True)
class CheckConfig:
    world_size: int
    steps: int
    seed: int
    num_layers: int = 3
    hidden: int = 32
    num_q_heads: int = 4
    num_kv_heads: int = 2  # MLA: 1
    head_dim: int = 16  # MLA: kv_lora_rank + rope
    page_size: int = 4
    max_pages: int = 4  # per sealed shard
    capacity: int = 0  # largest per-peer capacity bucket; 0: enough for one round
    impl: str = "auto"  # kernels: auto | torch | triton
    device: str = "cpu"  # "cuda": each rank's current CUDA device (gloo: ranks share GPUs)
    cuda_graph: bool = False  # capture each layer's one-round exchange (CUDA, NCCL only)
    backend: str = "gloo"
    mla: bool = False  # V is the first v_head_dim columns of the latent K (a view)
    paged: bool = False  # SGLang's paged allocator with page_size (else one token a page)

    @classmethod
    def for_mla(cls, world_size: int, steps: int, seed: int, **kw) -> "CheckConfig":
        """MLA geometry: one latent KV head of ``kv_lora_rank + rope`` columns."""
        return cls(
            world_size, steps, seed, num_kv_heads=1, head_dim=MLA_KV_LORA_RANK + MLA_ROPE_DIM,
            mla=True, **kw,
        )  # fmt: skip

    @property
    def v_head_dim(self) -> int:
        return MLA_KV_LORA_RANK if self.mla else self.head_dim

    def __post_init__(self) -> None:
        if self.mla and (self.num_kv_heads != 1 or self.head_dim <= MLA_KV_LORA_RANK):
            raise ValueError("MLA: one KV head wider than kv_lora_rank (use CheckConfig.for_mla)")


def _randn(*shape: int, key: tuple) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))
    return torch.randn(*shape, generator=g)


def _rid_num(rid: str) -> int:
    return int(rid[1:])


class Weights:
    def __init__(self, cfg: CheckConfig, dtype: torch.dtype = torch.float32) -> None:
        c, s = cfg, 1 / math.sqrt(cfg.hidden)
        self.cfg = cfg
        L, H, Hq, Hkv, D = c.num_layers, c.hidden, c.num_q_heads, c.num_kv_heads, c.head_dim
        Dv = c.v_head_dim
        self.wq = [(_randn(H, Hq * D, key=(c.seed, "wq", l)) * s).to(dtype) for l in range(L)]
        self.wk = [(_randn(H, Hkv * D, key=(c.seed, "wk", l)) * s).to(dtype) for l in range(L)]
        self.wv = [(_randn(H, Hkv * Dv, key=(c.seed, "wv", l)) * s).to(dtype) for l in range(L)]
        so = 1 / math.sqrt(Hq * Dv)
        self.wo = [(_randn(Hq * Dv, H, key=(c.seed, "wo", l)) * so).to(dtype) for l in range(L)]

    def to(self, device: torch.device) -> "Weights":
        for name in ("wq", "wk", "wv", "wo"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        return self

    def prompt_kv(self, rid: str, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A prompt's K ``[n, Hkv, D]`` and V ``[n, Hkv, Dv]`` (MLA: a view of K)."""
        c = self.cfg
        key = (c.seed, _rid_num(rid), layer)
        k = _randn(n, c.num_kv_heads, c.head_dim, key=("k",) + key)
        if c.mla:
            return k, k[..., : c.v_head_dim]
        return k, _randn(n, c.num_kv_heads, c.head_dim, key=("v",) + key)

    def new_kv(self, x: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K ``[B, Hkv, D]`` and V ``[B, Hkv, Dv]`` of stream rows ``x [B, hidden]``."""
        c = self.cfg
        k = (x @ self.wk[layer]).view(-1, c.num_kv_heads, c.head_dim)
        if c.mla:
            return k, k[..., : c.v_head_dim]
        return k, (x @ self.wv[layer]).view(-1, c.num_kv_heads, c.v_head_dim)

    def x0(self, rid: str, t: int) -> torch.Tensor:
        return _randn(self.cfg.hidden, key=(self.cfg.seed, "x", _rid_num(rid), t))


def reference_errors(cfg: CheckConfig, results: dict) -> tuple[float, str]:
    """Replay the stack in float64 over unsharded KV; (max relative error, where it occurred)."""
    w = Weights(cfg)
    f64 = lambda ts: [t.double() for t in ts]  # noqa: E731
    w.wq, w.wk, w.wv, w.wo = f64(w.wq), f64(w.wk), f64(w.wv), f64(w.wo)
    Hq, Hkv, D, Dv = cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim, cfg.v_head_dim
    kv: dict[str, list[list[torch.Tensor]]] = {}
    worst, where = 0.0, "no outputs"
    scenario = make_scenario(
        cfg.world_size, cfg.steps, cfg.seed, page_size=cfg.page_size, max_pages=cfg.max_pages
    )
    for st in scenario:
        for rid in st.finishes:
            del kv[rid]
        for p in st.arrivals:
            n = p.shards[-1].end
            kv[p.rid] = [
                [t.double() for t in w.prompt_kv(p.rid, l, n)] for l in range(cfg.num_layers)
            ]
        for p in st.placements:
            got = results.get((st.t, p.rid))
            if got is None:
                return math.inf, f"step {st.t}: no output for {p.rid} from home rank {p.home_rank}"
            x = w.x0(p.rid, st.t).double()
            for l in range(cfg.num_layers):
                k, v = kv[p.rid][l]
                k_new, v_new = w.new_kv(x.view(1, -1), l)
                k, v = torch.cat([k, k_new]), torch.cat([v, v_new])
                kv[p.rid][l] = [k, v]
                q = (x @ w.wq[l]).view(Hkv, Hq // Hkv, D)
                s = torch.einsum("hgd,nhd->hgn", q, k) / math.sqrt(D)
                o = torch.einsum("hgn,nhd->hgd", torch.softmax(s, -1), v).reshape(Hq, Dv)
                err = float((got[l].double() - o).abs().max() / o.abs().max().clamp_min(1e-30))
                if not err <= worst:
                    worst = err if not math.isnan(err) else math.inf
                    where = (f"step {st.t} layer {l} request {p.rid} (home {p.home_rank}, shards "
                             f"{[(s.rank, s.start, s.end) for s in p.shards]})")
                x = x + o.reshape(-1) @ w.wo[l]
    return worst, where
