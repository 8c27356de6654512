"""Kernels of the DCP data path, imported as ``sglang_dcp.kernels``.

Every rank runs ``decode_attention`` over the KV it holds, for its local requests and for guest
queries alike (one attention *item* = one query row + a list of KV slots); each home rank merges
a request's partials with ``merge_attention_states``. Prefill over shards runs
``prefix_attention`` instead: *tiles* of query rows of one chunk against a KV span (non-causal
on a shard rank, causal with an offset at home), each span read once per tile.

LSE convention (the one convention of the whole project): **natural log, shape
[num_items, num_heads], float32, and an empty key set is -inf** (with o = 0). Convert only at the
boundary of an external kernel that differs (FlashInfer is base 2: ``lse_natural_to_base2`` /
``lse_base2_to_natural``).

Each op takes ``impl="auto" | "triton" | "torch"``: "auto" runs Triton on CUDA tensors (and on
CPU tensors when ``TRITON_INTERPRET=1`` was set before this package was imported) and the torch
reference on CPU otherwise. The references (``*_ref``) are the test oracles as well.
"""

from .lse import lse_base2_to_natural, lse_natural_to_base2
from .dispatch import IMPLS, kernels_interpreted
from .ops import decode_attention, merge_attention_states
from .prefix_ops import prefix_attention
from .reference import decode_attention_ref, merge_attention_states_ref, prefix_attention_ref

if kernels_interpreted():  # TRITON_INTERPRET=1: the interpreter without its per-call rescans
    from .interpreter import install as _install_interpreter_cache

    _install_interpreter_cache()

__all__ = [
    "IMPLS",
    "decode_attention",
    "merge_attention_states",
    "prefix_attention",
    "prefix_attention_ref",
    "decode_attention_ref",
    "merge_attention_states_ref",
    "lse_natural_to_base2",
    "lse_base2_to_natural",
    "kernels_interpreted",
]
