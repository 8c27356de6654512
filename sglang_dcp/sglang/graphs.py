"""CUDA graphs with KV sharding: two decode graph variants per batch size, through SGLang 0.5.21's
attention graph variants (``layers/attention/graph_variants.py``).

``DecodeCudaGraphRunner`` captures, for every batch size, one graph per label of
``attention_graph_variants.capture_labels`` (``model_runner_utils.capture_mode``'s
``_capture_attention_variant`` names the one being captured) and replays the label
``select(forward_batch)`` returns. With sharding on, ``around_create_attention_graph_variants``
returns ``DcpGraphVariants``:

- ``plain``: SGLang's own decode, no exchange (a step in which no running request is split);
- ``dcp``: the same, plus every layer's exchange over the static buffers (``backend.py``).

``select`` reads the step every rank agreed on at the header (``datapath.current_step()``), so
every rank replays the same variant and the captured all-to-alls pair up; padded and idle ranks
replay it too. The DP controller's decode-graph vote is min-reduced over ranks, so a step that
must run eagerly (rounds, ``backend.needs_eager``) runs eagerly everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

PLAIN = "plain"
DCP = "dcp"


@dataclass(frozen=True)
class DcpGraphVariants:
    capture_labels: ClassVar[tuple[str, ...]] = (DCP, PLAIN)  # the larger first (shared pool)

    def select(self, forward_batch) -> str:
        from sglang_dcp.sglang.datapath import current_step

        step = current_step()
        return DCP if step is not None and step.active else PLAIN


def around_create_attention_graph_variants(original, hf_config, *args, **kwargs):
    """``graph_variants.create_attention_graph_variants(hf_config)`` (graph_variants.py:46):
    models with their own variants (DSA on ROCm) cannot shard; the rest get plain + dcp."""
    own = original(hf_config, *args, **kwargs)
    if own is not None:
        raise NotImplementedError(
            "sglang_dcp: this model captures its own attention graph variants "
            f"({type(own).__name__}); serve it with --dcp-max-degree 1"
        )
    return DcpGraphVariants()


def capturing_variant() -> str | None:
    """The variant being captured now (``None``: not capturing)."""
    from sglang.srt.model_executor.runner_utils.capture_mode import (
        get_capture_attention_variant,
        get_is_capture_mode,
    )

    if not get_is_capture_mode():
        return None
    return get_capture_attention_variant() or PLAIN
