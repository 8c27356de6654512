"""MLA models (DeepSeek-V3 / R1, Kimi-K2) under DCP: the absorbed path's shapes, and the CPU hook.

SGLang 0.5.21 runs DeepSeek attention (``models/deepseek_v2.py``) in one of two forms, picked
per batch by a handler registered per backend *name*
(``deepseek_common/attention_backend_handler.py``, ``AttentionBackendRegistry``):

- **MHA** (``forward_mha.py``) for an extend with no cached prefix: the latent is expanded to
  per-head K/V (``[T, H, 192]``-style q), the latent is written to the pool, and the backend is
  called with ``save_kv_cache=False``;
- **MLA, absorbed** (``forward_mla.py``) otherwise: ``q = [q_nope W_UK ; q_pe]``
  ``[T, H, kv_lora_rank + rope]``, ``k = [kv_a ; k_pe]`` ``[T, 1, kv_lora_rank + rope]``,
  ``v = kv_a`` ``[T, 1, kv_lora_rank]``; the backend returns the latent output
  ``[T, H * kv_lora_rank]`` and the model applies W_UV (``w_vc``) and ``o_proj`` after it.

The DCP exchange runs on the absorbed form unchanged: one latent KV head, the pool's value
buffer is a view of the first ``kv_lora_rank`` columns of its key buffer
(``MLATokenToKVPool``), shard ranks return latent partials ``o [H, kv_lora_rank]`` with their
LSE, and the home merges them before W_UV. That merge is exact: W_UV is linear and per head, so
``W_UV (sum_i w_i o_i) = sum_i w_i (W_UV o_i)``.

**CPU.** ``torch_native`` has no handler of its own, so it gets ``triton``'s, which picks MHA for
a fresh prefill; ``torch_native.forward_extend`` then reads the 576-wide (here 48-wide) latent
pool against the MHA q and fails (``Expected size ... [4, 32] but got: [4, 48]``). The hook
registers a ``torch_native`` handler that always takes the absorbed path (prefill included),
which ``torch_native`` computes correctly (SDPA with one KV head, V a view of K). It is a
registration in SGLang's own table, applied on CPU only (``cpu_compat.apply_sglang_fixes``).
"""

from __future__ import annotations

from dataclasses import dataclass

TORCH_NATIVE = "torch_native"
UNQUANTIZED_KV = ("auto", "bf16", "bfloat16", "float16", "float32")  # --kv-cache-dtype values
FP8_KV = ("fp8_e4m3",)  # what the exchange's kernels read (torch.float8_e4m3fn, with scales)


def quantized_kv_error(kv_cache_dtype: str, cuda: bool) -> str | None:
    """The launcher's one-line refusal of a quantized ``--kv-cache-dtype`` with KV sharding, or
    ``None`` where the exchange serves it (``fp8_e4m3`` on CUDA: the split-KV kernels dequantise
    with each layer's ``k_scale``/``v_scale``, as SGLang's triton backend does).

    CPU: SGLang 0.5.21's ``torch_native`` (the backend the exchange wraps there, and the one
    that computes prefill) passes the FP8 cache straight to SDPA, which refuses mixed dtypes
    ("Expected query, key, and value to have the same dtype"), with or without DCP. Other
    formats (``fp8_e5m2``, MXFP8, FP4) are not read by the exchange's kernels.
    """
    if not cuda:
        return (
            f"--kv-cache-dtype {kv_cache_dtype}: on CPU SGLang's torch_native attention cannot "
            "read a quantized KV cache (with or without KV sharding); drop --kv-cache-dtype"
        )
    if kv_cache_dtype in FP8_KV:
        return None
    return (
        f"--kv-cache-dtype {kv_cache_dtype} with KV sharding: the DCP exchange reads "
        f"{', '.join(FP8_KV)} or unquantized KV; use one of those or pass --dcp-max-degree 1"
    )


@dataclass(frozen=True, slots=True)
class MlaDims:
    """Per-layer attention geometry of the absorbed MLA path, read once from the model config.

    ``head_dim = kv_lora_rank + qk_rope_head_dim`` (q and the latent K row), ``v_head_dim =
    kv_lora_rank`` (the latent output; V is K's first columns), one KV head.
    """

    num_q_heads: int
    kv_lora_rank: int
    qk_rope_head_dim: int

    @property
    def head_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def v_head_dim(self) -> int:
        return self.kv_lora_rank

    num_kv_heads = 1


def mla_dims(model_config) -> MlaDims:
    """``MlaDims`` of an SGLang ``ModelConfig`` with ``attention_arch == MLA``."""
    return MlaDims(
        num_q_heads=int(model_config.num_attention_heads),
        kv_lora_rank=int(model_config.kv_lora_rank),
        qk_rope_head_dim=int(model_config.qk_rope_head_dim),
    )


def attention_dims(runner) -> tuple[int, int, int]:
    """``(num_q_heads, head_dim, v_head_dim)`` of the rows the exchange carries for SGLang model
    runner ``runner``: MLA models (``use_mla_backend``) the absorbed latent (``MlaDims``), others
    the model's heads."""
    mc = runner.model_config
    if getattr(runner, "use_mla_backend", False):
        d = mla_dims(mc)
        return d.num_q_heads, d.head_dim, d.v_head_dim
    return mc.num_attention_heads, mc.head_dim, getattr(mc, "v_head_dim", None) or mc.head_dim


def _absorbed_always(attn, forward_batch):
    """Handler for ``torch_native``: the absorbed MLA method for every batch."""
    from sglang.srt.models.deepseek_common.attention_backend_handler import (
        _dispatch_mla_subtype,
    )

    return _dispatch_mla_subtype(attn, forward_batch)


def register_cpu_mla_handler() -> bool:
    """Register the ``torch_native`` DeepSeek attention handler (module docstring, **CPU**).
    Returns False when one is registered already (by SGLang or by an earlier call)."""
    from sglang.srt.models.deepseek_common.attention_backend_handler import (
        AttentionBackendRegistry,
    )

    if TORCH_NATIVE in AttentionBackendRegistry._handlers:
        return False
    AttentionBackendRegistry.register(TORCH_NATIVE, _absorbed_always)
    return True


def is_mla_pool(kv_pool) -> bool:
    """SGLang's ``MLATokenToKVPool`` (one latent buffer per layer, ``kv_buffer``) rather than an
    MHA pool (``k_buffer`` / ``v_buffer``)."""
    return hasattr(kv_pool, "kv_buffer") and not hasattr(kv_pool, "k_buffer")


def pool_layers(kv_pool) -> tuple[list, list]:
    """Per-layer storage that holds a token's KV, as ``(k_layers, v_layers)`` for moving or
    poisoning slots: ``[num_slots, num_kv_heads, dim]`` each.

    MHA pools: their K and V buffers. MLA pools: the latent buffer ``[num_slots, 1, kv_lora_rank
    + rope]`` (the raw storage, so FP8 bytes move as stored) and zero-width V views, because V is
    the latent's first columns and moves with it (``exchange.transfer`` then ships each token's
    latent once, not twice).
    """
    if is_mla_pool(kv_pool):
        k = list(kv_pool.kv_buffer)
        return k, [buf[..., :0] for buf in k]
    return list(kv_pool.k_buffer), list(kv_pool.v_buffer)
