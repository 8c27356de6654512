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
  (views of the largest), so the variants cost capture time and graph memory, not buffers;
- ``dcp<c>n``, on a server of several nodes (``--dcp-ranks-per-node``): the same with both
  all-to-alls among the rank's node only (``wire.scope_peers``), for steps in which no split
  request has a shard off its home's node.

``select`` reads the step every rank agreed on at the header (``context.current_step()``,
its ``bucket`` and ``peers`` from the step plan), so every rank replays the same variant and the
captured all-to-alls pair up; padded and idle ranks replay it too. The DP controller's
decode-graph vote is min-reduced over ranks, so a step that must run eagerly (rounds,
``backend.needs_eager``) runs eagerly everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAIN = "plain"
DCP = "dcp"
NODE = "n"  # suffix of a node-scoped variant


def label(bucket: int, node: bool = False) -> str:
    """The graph variant of a DCP step at ``bucket`` queries per peer pair, node-scoped or not."""
    return f"{DCP}{bucket}{NODE if node else ''}"


def bucket_of(variant: str | None) -> int | None:
    """The bucket of a ``dcp<c>[n]`` variant (``None``: ``plain`` or not capturing)."""
    if variant is None or not variant.startswith(DCP):
        return None
    return int(variant[len(DCP) :].removesuffix(NODE))


def node_scoped(variant: str | None) -> bool:
    """A ``dcp<c>n`` variant: its exchange runs within the rank's node."""
    return bucket_of(variant) is not None and variant.endswith(NODE)


@dataclass(frozen=True)
class DcpGraphVariants:
    buckets: tuple[int, ...] = (1,)  # wire.capacity_buckets of the engine's capacity
    node_scope: bool = False  # several nodes: a node-scoped variant per bucket too

    @property
    def capture_labels(self) -> tuple[str, ...]:
        # the larger first (shared graph memory pool), plain last
        scopes = (False, True) if self.node_scope else (False,)
        return (*(label(c, n) for c in sorted(self.buckets, reverse=True) for n in scopes), PLAIN)

    def select(self, forward_batch) -> str:
        from sglang_dcp.sglang.context import current_step

        step = current_step()
        if step is None or not step.active:
            return PLAIN
        return label(step.bucket, step.peers is not None)


def variants() -> DcpGraphVariants:
    """The variants of this server (its ``--dcp-max-guest-items``, ``--dcp-ranks-per-node``)."""
    from sglang_dcp.exchange.wire import capacity_buckets
    from sglang_dcp.sglang.options import DcpOptions

    opts = DcpOptions.from_env()
    return DcpGraphVariants(capacity_buckets(opts.max_guest_items),
                            node_scope=opts.ranks_per_node is not None)  # fmt: skip


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
