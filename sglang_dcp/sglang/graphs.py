"""CUDA graphs with KV sharding: decode graph variants per batch size, through SGLang 0.5.21's
attention graph variants (``layers/attention/graph_variants.py``).

``DecodeCudaGraphRunner`` captures, for every batch size, one graph per label of
``attention_graph_variants.capture_labels`` (``model_runner_utils.capture_mode``'s
``_capture_attention_variant`` names the one being captured) and replays the label
``select(forward_batch)`` returns. With sharding on, ``around_create_attention_graph_variants``
returns ``DcpGraphVariants``:

- ``plain``: SGLang's own decode, no exchange (a step in which no running request is split);
- ``dcp<c>``, one per bucket ``c`` of ``wire.capacity_buckets(--dcp-max-guest-items)``: the
  same, plus every layer's exchange over the static buffers' bucket-``c`` views
  (``backend.py``), whose all-to-alls carry ``c`` queries per peer pair. Buckets share memory
  (views of the largest), so the variants cost capture time and graph memory, not buffers.

``select`` reads the step every rank agreed on at the header (``context.current_step()``,
its ``bucket`` from the step plan), so every rank replays the same variant and the captured
all-to-alls pair up; padded and idle ranks replay it too. The DP controller's decode-graph vote is
min-reduced over ranks, so a step that must run eagerly (rounds, ``backend.needs_eager``) runs
eagerly everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAIN = "plain"
DCP = "dcp"


def label(bucket: int) -> str:
    """The graph variant of a DCP step at ``bucket`` queries per peer pair."""
    return f"{DCP}{bucket}"


def bucket_of(variant: str | None) -> int | None:
    """The bucket of a ``dcp<c>`` variant (``None``: ``plain`` or not capturing)."""
    if variant is None or not variant.startswith(DCP):
        return None
    return int(variant[len(DCP) :])


@dataclass(frozen=True)
class DcpGraphVariants:
    buckets: tuple[int, ...] = (1,)  # wire.capacity_buckets of the engine's capacity

    @property
    def capture_labels(self) -> tuple[str, ...]:
        # the larger first (shared graph memory pool), plain last
        return (*(label(c) for c in sorted(self.buckets, reverse=True)), PLAIN)

    def select(self, forward_batch) -> str:
        from sglang_dcp.sglang.context import current_step

        step = current_step()
        return label(step.bucket) if step is not None and step.active else PLAIN


def variants() -> DcpGraphVariants:
    """The variants of this server (its ``--dcp-max-guest-items``)."""
    from sglang_dcp.exchange.wire import capacity_buckets
    from sglang_dcp.sglang.options import DcpOptions

    return DcpGraphVariants(capacity_buckets(DcpOptions.from_env().max_guest_items))


def around_create_attention_graph_variants(original, hf_config, *args, **kwargs):
    """``graph_variants.create_attention_graph_variants(hf_config)`` (graph_variants.py:46):
    models with their own variants (DSA on ROCm) cannot shard; the rest get plain + dcp."""
    own = original(hf_config, *args, **kwargs)
    if own is not None:
        raise NotImplementedError(
            "sglang_dcp: this model captures its own attention graph variants "
            f"({type(own).__name__}); serve it with --dcp-max-degree 1"
        )
    return variants()


def capturing_variant() -> str | None:
    """The variant being captured now (``None``: not capturing)."""
    from sglang.srt.model_executor.runner_utils.capture_mode import (
        get_capture_attention_variant,
        get_is_capture_mode,
    )

    if not get_is_capture_mode():
        return None
    return get_capture_attention_variant() or PLAIN
