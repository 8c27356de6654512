"""The ``dcp_triton`` attention backend: SGLang's own backend, plus the exchange for split rows.

With KV sharding on, ``around_build_resolved_backend`` wraps the backend SGLang 0.5.21 builds
(``attention_backend_setup._build_resolved_backend``) in ``DcpAttnBackend``: the one the user
chose or SGLang's default for the model and GPU (FA3, FlashInfer, FlashMLA, triton, ...; any of
``options.SHARDABLE_BACKENDS``), ``torch_native`` on CPU. Unsplit rows never leave it; split
rows' own part runs on our split-KV kernel inside the exchange and merges by LSE, so the inner
backend only needs to see those rows at length 1. The inner backend keeps its name (SGLang picks
code paths by it); ``--attention-backend dcp_triton`` is a spelling that builds ``triton``.

Outside DCP steps every call goes to the inner backend untouched. In a DCP step
(``context.current_step().active``, the same on every rank) every rank joins each layer's
exchange exactly once, over one ``exchange.static.StaticExchange`` sized at the first metadata
call (``init_cuda_graph_state`` on GPU) and never reallocated:

- decode: the inner backend runs every row as without the plugin (K/V store included), split
  rows at sequence length 1 (``backend_meta.py``); their queries go through the exchange and
  replace the inner output, by device ops keyed by ``req_pool_indices`` (graph-capturable,
  ``graphs.py``);
- extend: the inner backend stores the chunk's K/V and computes the batch's other rows; the
  rows of a split request's prefill chunk (``prefill_shards.py``) go through the tile exchange
  (``backend_extend.py``, ``exchange.tile_exchange``: the home's causal part and each shard's
  part as row tiles, merged by LSE) and replace the inner's, which never read their moved KV;
- a rank with no rows (the model skips attention) joins in ``around_stage_finish``.

Shapes: ``q [num_tokens, H * D]``, output ``[num_tokens, H * Dv]``; per rank ``H`` is the model's
query heads (``attn_tp_size == 1``). MLA (``mla.py``): SGLang's absorbed path, ``D = kv_lora_rank
+ rope``, ``Dv = kv_lora_rank``; the latent output is merged across ranks before W_UV.
"""

from __future__ import annotations

import logging
import time

import torch

from sglang_dcp import env
from sglang_dcp.sglang import shipping
from sglang_dcp.sglang.backend_extend import ExtendCalls
from sglang_dcp.sglang.backend_meta import LayerCursor, MetadataCalls
from sglang_dcp.sglang import context
from sglang_dcp.sglang.context import stats

NAME = "dcp_triton"
logger = logging.getLogger(__name__)

def _backend() -> "DcpAttnBackend | None":
    from sglang_dcp.sglang.context import ctx

    return ctx().backend


class DcpAttnBackend(MetadataCalls, ExtendCalls):
    """Delegates everything to ``inner`` except the metadata calls and ``forward`` in DCP steps.

    Not an ``AttentionBackend`` subclass on purpose: the base class's many methods would shadow
    the delegation (``__getattr__`` only sees names the class lacks).
    """

    def __init__(self, inner, runner) -> None:
        from sglang.srt.runtime_context import get_parallel

        par = get_parallel()
        if par.attn_tp_size != 1:
            raise NotImplementedError(
                f"--attention-backend {NAME} needs attention TP size 1 (--tp-size == --dp-size)"
            )
        layers = getattr(getattr(runner.model, "model", None), "layers", None) or []
        if not layers or not all(hasattr(layer, "attn_boundary") for layer in layers):
            # Ranks without rows join each layer's exchange from StageBoundary.finish; a model
            # whose layers do not go through it would deadlock the first DCP step.
            raise NotImplementedError(
                f"--attention-backend {NAME}: {type(runner.model).__name__} does not run its "
                "attention through SGLang's layer boundary; serve it with --dcp-max-degree 1"
            )
        from sglang_dcp.sglang.mla import attention_dims

        heads, d, dv = attention_dims(runner)  # MLA: the absorbed path's latent (mla.py)
        self._init_state(inner, runner, num_ranks=par.tp_group.world_size, num_q_heads=heads,
                         head_dim=d, v_head_dim=dv)  # fmt: skip
        self.reserve_tiles()  # prefill into shards: sized by the chunk size, once

    def _init_state(self, inner, runner, *, num_ranks, num_q_heads, head_dim, v_head_dim):
        """Everything but the checks (``testing.graph_harness`` builds one without SGLang)."""
        self.inner, self.num_q_heads = inner, num_q_heads
        self.head_dim, self.v_head_dim = head_dim, v_head_dim
        self.dtype = runner.dtype
        self.device = torch.device(runner.device)
        self.start_layer = getattr(runner.token_to_kv_pool, "start_layer", 0) or 0
        self.num_ranks = num_ranks
        self._runner = runner
        self._scaling: dict[int, float] | None = None
        self._kernels = None
        self.ex = None  # StaticExchange, sized once (ensure_exchange)
        self.current_ex = None  # the running step's: self.ex, or a bigger one-off (eager)
        self._capture = LayerCursor()  # the forward being captured (no step)
        self._forward: LayerCursor | None = None  # the running step's forward
        self._inner_seq = None  # [max_bs] static seq lens the inner sees under graphs
        self._eager_seq = None  # the same for an eager batch larger than the graphs'
        self._host_seqs = [torch.ones(0, dtype=torch.int32)] * 2  # their host mirrors
        self._num_real = None  # [1] real rows of a padded graph replay
        self._inner_fb = None  # (forward batch, its view for the inner) of the running step
        self._extend_x = None  # (forward batch, exchange row per query row): prefill chunks

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    # -- the exchange ---------------------------------------------------------------------------
    def _attention_fns(self):
        if self._kernels is None:
            from sglang_dcp.exchange.exchange import default_kernels

            self._kernels = default_kernels("auto")
        return self._kernels

    def cursor(self) -> LayerCursor | None:
        """The running exchange's layer cursor: the capture's (a ``dcp`` variant) or the step's
        forward's (its route loaded once per step: from the metadata call, or here on a rank
        whose idle batch skipped it); ``None`` when this forward runs no exchange."""
        from sglang_dcp.sglang.graphs import bucket_of, capturing_variant

        variant = capturing_variant()
        if variant is not None:
            return self._capture if bucket_of(variant) is not None else None
        step = context.current_step()
        if step is None or not step.active:
            return None
        self.load(step)
        return self._forward

    def exchange(self, cur: LayerCursor, layer_id: int, q: torch.Tensor | None,
                 x: torch.Tensor | None, *, tile_rows=None):  # fmt: skip
        """Join layer ``layer_id``'s exchange with ``q [n, H, D]`` rows mapped by ``x [n]``
        (``None``: no rows here); returns the merged ``[B, H, Dv]`` of the exchange rows. In a
        step with prefill chunks the tile exchange follows (``tile_rows``: this rank's chunk
        rows, ``(q, x)``), and its merged ``[N + 1, H, Dv]`` is returned for ``tile_rows``."""
        if layer_id != self.start_layer + cur.next_layer or cur.done_layer == layer_id:
            raise RuntimeError(
                f"sglang_dcp: joined the exchange of layer {layer_id}, expected layer "
                f"{self.start_layer + cur.next_layer}: ranks would deadlock"
            )
        t0 = time.perf_counter()
        ex = self.current_ex  # the step's (``cursor`` loaded it) or, capturing, the static one
        if q is not None:
            ex.scatter_rows(q, x)
        attention, merge = self._attention_fns()
        pool = self._runner.token_to_kv_pool
        k_buf = pool.get_key_buffer(layer_id)
        scales = {}
        if k_buf.dtype == torch.float8_e4m3fn:  # FP8 cache: the layer's scales, as SGLang's
            scales = self.layer_kv_scales(layer_id)  # triton backend applies them
        merged, step = None, cur.step  # (a capture has no step: it runs the decode exchange)
        if step is None or step.decode_split:
            merged = ex.run(
                context.step_comm(), k_buf, pool.get_value_buffer(layer_id),
                sm_scale=self.layer_scaling(layer_id), attention=attention, merge=merge, **scales,
            )  # fmt: skip
        if step is not None and step.tiles is not None:
            tiles = self.run_tiles(layer_id, tile_rows, k_buf, pool.get_value_buffer(layer_id),
                                   scales)  # fmt: skip
            merged = tiles if tile_rows is not None else merged
        cur.done_layer = layer_id
        cur.exchange_s += time.perf_counter() - t0
        return merged

    # -- AttentionBackend.forward ---------------------------------------------------------------
    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        cur = self.cursor()
        if cur is None:
            return self.inner.forward(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        if getattr(layer, "logit_cap", 0) or (getattr(layer, "sliding_window_size", -1) or -1) > 0:
            raise NotImplementedError(
                f"{NAME}: logit cap and sliding-window attention are not supported in DCP steps"
            )
        mode = forward_batch.forward_mode
        if mode.is_idle():
            self.exchange(cur, layer.layer_id, None, None)
            return q.new_empty(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)
        inner_fb = self._view_for_inner(forward_batch)
        out = self.inner.forward(q, k, v, layer, inner_fb, save_kv_cache, **kwargs)
        n = q.reshape(-1, layer.tp_q_head_num * layer.qk_head_dim).shape[0]
        if not mode.is_decode():  # extend: split requests' chunk rows (backend_extend.py)
            return self.forward_extend(cur, q, layer, forward_batch, out)
        x = self._row_map(forward_batch, n)
        q3 = q.reshape(n, layer.tp_q_head_num, layer.qk_head_dim)
        merged = self.exchange(cur, layer.layer_id, q3, x)
        if merged is None:  # only prefill chunks are split this step: every decode row is SGLang's
            return out
        rows = self.current_ex.gather_rows(out.reshape(n, -1), x, merged)
        if env.poison_moved():
            shipping.check_rows(context.current_step(), layer.layer_id, rows, x,
                                self.current_ex.shape.max_local)  # fmt: skip
        return rows.view_as(out)

    def _row_map(self, fb, n: int) -> torch.Tensor:
        """``[n]`` exchange row per q row (``B``: SGLang's own output stays): keyed by
        ``req_pool_indices``; DP-attention padding rows (past the batch, or past the real rows of
        a padded graph replay) never map."""
        ex = self.current_ex
        keys = fb.req_pool_indices
        m = keys.shape[0]
        valid = None
        if self._num_real is not None and m == n:
            valid = torch.arange(n, device=keys.device) < self._num_real
        x = ex.row_index(keys[:n], valid)
        if m < n:
            x = torch.cat([x, x.new_full((n - m,), ex.shape.max_local)])
        return x


def needs_eager(step) -> bool:
    be = _backend()
    return be is not None and be.needs_eager(step)




def create(runner):
    """``ATTENTION_BACKENDS["dcp_triton"](runner)``: SGLang's ``triton`` backend (the DCP wrapper
    goes around it in ``around_build_resolved_backend``)."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    return ATTENTION_BACKENDS["triton"](runner)


def around_build_resolved_backend(original, *, model_runner, resolved, init_new_workspace):
    """``attention_backend_setup._build_resolved_backend(*, model_runner, resolved,
    init_new_workspace)`` (model_runner_components/attention_backend_setup.py:201), which every
    path that builds a model runner's attention backend goes through: wrap what SGLang built."""
    from sglang_dcp.sglang.options import SHARDABLE_BACKENDS

    runner = model_runner
    odd = [b for b in (resolved.prefill, resolved.decode) if b not in SHARDABLE_BACKENDS]
    if odd:
        raise NotImplementedError(
            f"sglang_dcp: KV sharding wraps a dense attention backend "
            f"({', '.join(SHARDABLE_BACKENDS)}); SGLang resolved prefill={resolved.prefill} "
            f"decode={resolved.decode}; pass --attention-backend with one of those or "
            "--dcp-max-degree 1"
        )
    if resolved.is_draft_override or getattr(runner, "is_draft_worker", False):
        raise NotImplementedError("sglang_dcp: speculative decoding is not supported with DCP")
    inner = original(
        model_runner=model_runner, resolved=resolved, init_new_workspace=init_new_workspace
    )
    from sglang_dcp.sglang.context import ctx

    be = ctx().backend = DcpAttnBackend(inner, runner)
    logger.info("sglang_dcp: %s attention runs through the DCP exchange", resolved.prefill)
    return be


def register() -> None:
    from sglang.srt.layers.attention.attention_registry import (
        ATTENTION_BACKENDS,
        register_attention_backend,
    )
    from sglang.srt.arg_groups.choices import add_attention_backend_choices

    if NAME not in ATTENTION_BACKENDS:
        register_attention_backend(NAME)(create)
        add_attention_backend_choices([NAME])


def around_stage_finish(original, self, hidden_states, forward_batch, *args, **kwargs):
    """``StageBoundary.finish(hidden_states, forward_batch)`` (layer_boundary/stage.py:168),
    after each layer's attention on every rank: a rank that skipped attention (no rows) joins
    this layer's exchange here; then the layer cursor moves on."""
    be = _backend()
    cur = be.cursor() if be is not None else None
    if cur is None and (step := context.current_step()) is not None and step.active:
        raise RuntimeError(f"sglang_dcp: a DCP step needs --attention-backend {NAME}")
    if cur is not None:
        layer_id = be.start_layer + cur.next_layer
        if cur.done_layer != layer_id:
            be.exchange(cur, layer_id, None, None)
        cur.next_layer += 1
        if cur.step is not None and cur.next_layer == be._runner.token_to_kv_pool.layer_num:
            s = stats()
            s.exchange_ms_last_step = cur.exchange_s * 1e3
            s.exchange_ms_total += cur.exchange_s * 1e3
            s.guest_items_last_step = cur.step.route.num_guest_items
    return original(self, hidden_states, forward_batch, *args, **kwargs)
