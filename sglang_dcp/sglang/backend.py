"""The ``dcp_triton`` attention backend: SGLang's own backend, plus the exchange in DCP steps.

With KV sharding on, ``around_build_resolved_backend`` wraps the backend SGLang 0.5.21 builds
(``attention_backend_setup._build_resolved_backend``) in ``DcpAttnBackend``: ``triton`` on CUDA,
``torch_native`` on CPU. SGLang picks CPU/GPU code paths by the backend's *name*
(``utils/common.py:1385`` ``support_triton``, ``mem_cache/allocation.py``), so the inner backend
keeps its own name; ``--attention-backend dcp_triton`` (``register_attention_backend``) is the
explicit GPU spelling and builds ``triton``. Outside DCP steps every call goes to the inner
backend untouched. In a DCP step (``current_step().active``, the same on
every rank, ``datapath.current_step()``) every rank joins each layer's exchange exactly once:

- decode: the new K/V is stored, then every row's attention runs through
  ``exchange.exchange_attention`` (local KV of plain requests and of DCP tails, guest items for
  peers, LSE merge) with ``sglang_dcp.kernels`` (Triton on CUDA; the torch reference on CPU, or
  the Triton interpreter under ``TRITON_INTERPRET=1``);
- extend: the inner backend computes the prefill, then the rank serves its guest items;
- a rank whose batch has no rows never reaches the backend (the model skips attention on empty
  input): ``around_stage_finish`` (the attention stage's ``StageBoundary.finish``, called by
  every layer of every rank) runs its exchange there.

Shapes: ``q [num_tokens, H * D]``, output ``[num_tokens, H * Dv]``; per rank ``H`` is the model's
query heads (``attn_tp_size == 1``). MLA models (``mla.py``): SGLang's absorbed path, ``D =
kv_lora_rank + rope``, ``Dv = kv_lora_rank``, one latent KV head whose first ``Dv`` columns are V;
the output is the latent, merged across ranks before the model applies W_UV.
"""

from __future__ import annotations

import logging
import time

import torch

from sglang_dcp import env
from sglang_dcp.sglang.rank_stats import stats

NAME = "dcp_triton"
logger = logging.getLogger(__name__)

_BACKEND: "DcpAttnBackend | None" = None


class DcpAttnBackend:
    """Delegates everything to ``inner`` except ``forward`` in DCP steps.

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
        mc = runner.model_config
        self.inner = inner
        self.num_q_heads = mc.num_attention_heads
        self.head_dim = mc.head_dim
        self.v_head_dim = getattr(mc, "v_head_dim", None) or mc.head_dim
        self.mla = bool(getattr(runner, "use_mla_backend", False))
        if self.mla:  # the absorbed path's latent geometry (mla.py), one KV head
            from sglang_dcp.sglang.mla import mla_dims

            d = mla_dims(mc)
            self.num_q_heads, self.head_dim = d.num_q_heads, d.head_dim
            self.v_head_dim = d.v_head_dim
        self.dtype = runner.dtype
        self.device = torch.device(runner.device)
        self.start_layer = getattr(runner.token_to_kv_pool, "start_layer", 0) or 0
        self._runner = runner
        self._scaling: dict[int, float] | None = None
        self._kernels = None
        self._bufs: dict = {}

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    # -- the exchange ---------------------------------------------------------------------------
    def layer_scaling(self, layer_id: int) -> float:
        """``sm_scale`` of layer ``layer_id``, read from the model's ``RadixAttention`` modules (a
        rank serving guest items for a layer it never ran attention for needs it too)."""
        if self._scaling is None:
            from sglang.srt.layers.radix_attention import RadixAttention

            self._scaling = {
                m.layer_id: float(m.scaling)
                for m in self._runner.model.modules()
                if isinstance(m, RadixAttention) and m.qk_head_dim == self.head_dim
            }  # MLA layers also hold an MHA RadixAttention (prefill); the exchange runs MQA
        return self._scaling[layer_id]

    def _attention_fns(self):
        if self._kernels is None:
            from sglang_dcp.exchange.exchange import default_kernels

            self._kernels = default_kernels("auto")
        return self._kernels

    def _buffers(self, step):
        """The step's exchange buffers (one set per shape, reused), loaded with its metadata."""
        if step.bufs is None:
            from sglang_dcp.exchange.buffers import ExchangeBuffers, ExchangeShape, build_step_meta

            shape = ExchangeShape(
                num_ranks=step.num_ranks,
                max_local=max(1, step.num_rows),
                capacity=step.plan.capacity(step.num_ranks),
                num_q_heads=self.num_q_heads,
                head_dim=self.head_dim,
                v_head_dim=self.v_head_dim,
                max_kv_slots=max(1, step.route.num_kv_slots),
                dtype=self.dtype,
            )
            bufs = self._bufs.get(shape)
            if bufs is None:
                if len(self._bufs) > 64:
                    self._bufs.clear()
                bufs = self._bufs[shape] = ExchangeBuffers(shape, self.device)
            bufs.copy_from(build_step_meta(step.route, shape, tag=step.tag))
            step.bufs = bufs
        return step.bufs

    def exchange(self, step, layer_id: int, token_to_kv_pool, q: torch.Tensor | None, sm_scale):
        """Join layer ``layer_id``'s exchange; returns ``[num_rows, H * Dv]`` (home rows)."""
        from sglang_dcp.exchange.exchange import exchange_attention

        if layer_id != self.start_layer + step.next_layer or step.done_layer == layer_id:
            raise RuntimeError(
                f"sglang_dcp: rank {step.rank} joined the exchange of layer {layer_id}, expected "
                f"layer {self.start_layer + step.next_layer}: ranks would deadlock"
            )
        t0 = time.perf_counter()
        bufs = self._buffers(step)
        B = step.num_rows
        if B:
            bufs.q_in[:B].copy_(q[:B].view(B, self.num_q_heads, self.head_dim))
        attention, merge = self._attention_fns()
        exchange_attention(
            bufs,
            step_comm(),
            token_to_kv_pool.get_key_buffer(layer_id),
            token_to_kv_pool.get_value_buffer(layer_id),
            sm_scale=sm_scale,
            attention=attention,
            merge=merge,
        )
        step.done_layer = layer_id
        step.exchange_s += time.perf_counter() - t0
        return bufs.out[:B].reshape(B, self.num_q_heads * self.v_head_dim)

    # -- AttentionBackend.forward ---------------------------------------------------------------
    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        step = current_step()
        if step is None or not step.active:
            return self.inner.forward(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        if getattr(layer, "logit_cap", 0) or (getattr(layer, "sliding_window_size", -1) or -1) > 0:
            raise NotImplementedError(
                f"{NAME}: logit cap and sliding-window attention are not supported in DCP steps"
            )
        pool = self._runner.token_to_kv_pool
        mode = forward_batch.forward_mode
        if mode.is_decode():
            if save_kv_cache and k is not None and v is not None:
                from sglang.srt.mem_cache.memory_pool import KVWriteLoc

                pool.set_kv_buffer(
                    layer,
                    KVWriteLoc(forward_batch.out_cache_loc, getattr(self.inner, "swa_out_cache_loc", None)),
                    k,
                    v,
                )
            q2 = q.reshape(-1, layer.tp_q_head_num * layer.qk_head_dim)
            if q2.shape[0] < step.num_rows:  # more is DP-attention padding (MAX_LEN mode)
                raise RuntimeError(
                    f"sglang_dcp: rank {step.rank} decodes {q2.shape[0]} rows but its DCP step "
                    f"was planned for {step.num_rows} (step header and forward disagree)"
                )
            rows = self.exchange(step, layer.layer_id, pool, q2, layer.scaling)
            if env.poison_moved():
                _check_rows(step, layer.layer_id, rows, pool)
            out = q2.new_zeros(q2.shape[0], layer.tp_q_head_num * layer.v_head_dim)
            out[: rows.shape[0]] = rows.to(out.dtype)
            return out
        if mode.is_idle():
            self.exchange(step, layer.layer_id, pool, None, layer.scaling)
            return q.new_empty(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)
        out = self.inner.forward(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        self.exchange(step, layer.layer_id, pool, None, layer.scaling)
        return out


def _check_rows(step, layer_id: int, rows: torch.Tensor, pool) -> None:
    """Debug check under ``SGLANG_DCP_POISON_MOVED=1``: a NaN row read a poisoned (moved) slot;
    log which request and which of its local slots hold NaN."""
    bad = torch.isnan(rows.float()).any(dim=1).nonzero().flatten().tolist()
    if not bad:
        return
    k = pool.get_key_buffer(layer_id)
    for i in bad:
        rid = step.row_rids[i] if i < len(step.row_rids) else "?"
        slots = step.row_slots.get(rid, [])
        nan_slots = [s for s in slots if torch.isnan(k[s].float()).any()]
        logger.error(
            "sglang_dcp: step %d layer %d row %d (%s) attention is NaN; %d local slots, NaN in "
            "%s; plan %s",
            step.tag, layer_id, i, rid, len(slots), nan_slots[:16], step.plan,
        )  # fmt: skip


def step_comm():
    from sglang_dcp.sglang.datapath import runtime

    return runtime().comm


def current_step():
    from sglang_dcp.sglang.datapath import current_step as cs

    return cs()


INNER_BACKENDS = ("triton", "torch_native", NAME)


def create(runner):
    """``ATTENTION_BACKENDS["dcp_triton"](runner)``: SGLang's ``triton`` backend (the DCP wrapper
    goes around it in ``around_build_resolved_backend``)."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    return ATTENTION_BACKENDS["triton"](runner)


def around_build_resolved_backend(original, *, model_runner, resolved, init_new_workspace):
    """``attention_backend_setup._build_resolved_backend(*, model_runner, resolved,
    init_new_workspace)`` (model_runner_components/attention_backend_setup.py:201), which every
    path that builds a model runner's attention backend goes through: wrap what SGLang built."""
    global _BACKEND
    runner = model_runner
    if resolved.prefill != resolved.decode or resolved.prefill not in INNER_BACKENDS:
        raise NotImplementedError(
            f"sglang_dcp: KV sharding runs over SGLang's triton (GPU) or torch_native (CPU) "
            f"attention backend, got prefill={resolved.prefill} decode={resolved.decode}; pass "
            "--attention-backend triton/torch_native or --dcp-max-degree 1"
        )
    if resolved.is_draft_override or getattr(runner, "is_draft_worker", False):
        raise NotImplementedError("sglang_dcp: speculative decoding is not supported with DCP")
    inner = original(
        model_runner=model_runner, resolved=resolved, init_new_workspace=init_new_workspace
    )
    _BACKEND = DcpAttnBackend(inner, runner)
    logger.info("sglang_dcp: %s attention runs through the DCP exchange", resolved.prefill)
    return _BACKEND


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
    this layer's exchange here; then the layer counter moves on."""
    step = current_step()
    if step is not None and step.active:
        be = _BACKEND
        if be is None:
            raise RuntimeError(f"sglang_dcp: a DCP step needs --attention-backend {NAME}")
        layer_id = be.start_layer + step.next_layer
        if step.done_layer != layer_id:
            be.exchange(step, layer_id, be._runner.token_to_kv_pool, None, be.layer_scaling(layer_id))
        step.next_layer += 1
        if step.next_layer == be._runner.token_to_kv_pool.layer_num:
            s = stats()
            s.active_steps += 1
            s.exchange_ms_last_step = step.exchange_s * 1e3
            s.exchange_ms_total += step.exchange_s * 1e3
            s.guest_items_last_step = step.route.num_guest_items
    return original(self, hidden_states, forward_batch, *args, **kwargs)

