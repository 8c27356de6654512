"""Attention cost by layer kind: how a profile prices dense, sparse, compressed, window and
linear attention layers (issue 29).

A profile may list its attention layers by kind (``attention_layers`` in the JSON). Every
coefficient there is **per layer** (µs per decode step, or bytes per KV token); the loader
multiplies by ``layers`` and adds them into the all-layer coefficients the step model reads
(``CostProfile``), so the planner and the simulator need no new code path::

    attn_us_per_kv_token  = sum_k layers_k * us_per_kv_token_k       # the linear term
    attn_us_per_item     += sum_k layers_k * us_per_item_k           # every query row on a rank
    attn_us_per_request  += sum_k layers_k * us_per_request_k        # each request, at home only
    exchange_us_per_item += sum_k layers_k * exchange_us_per_item_k  # per guest item, both ranks
    exchange_us_fixed    += sum_k layers_k * exchange_us_fixed_k     # once any guest exists
    kv_bytes_per_token    = ceil(sum_k layers_k * kv_bytes_per_token_k)

What each kind may carry, and why:

- ``dense`` (MLA, GQA, MHA over every KV token): linear term only.
- ``dsa`` (an indexer scores every KV token, attention runs over the top-k): the indexer is
  the linear term; attention over the top-k is a constant per query row, paid by every rank
  holding a shard of the request (each runs the sparse kernel over its share of the selected
  tokens with a top-k-sized index list), so it is ``us_per_item``. A split pays a candidate
  exchange (shard top-k scores and indices to home, the merged selection back):
  ``exchange_us_per_item`` and the extra all-to-all rounds in ``exchange_us_fixed``.
- ``csa`` (top-k over compressed keys): as ``dsa``, over keys compressed by the layer's ratio.
- ``hca`` (dense attention over heavily compressed entries): linear term only (a small one).
- ``window`` (attention over the last W tokens): a per-request constant at home (the window
  is the request's tail, which stays at home); its KV is bounded per request, not per token.
- ``linear`` (recurrent state, e.g. Gated DeltaNet): a per-request constant at home (the state
  lives with the request's home); no KV per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

LAYER_KINDS = ("dense", "dsa", "csa", "hca", "window", "linear")
_SPLIT_EXCHANGE = ("dsa", "csa")  # kinds whose split needs a global top-k: candidate exchange
_NO_KV = ("window", "linear")  # per-request state, not per-token KV
_PER_LAYER = (
    "kv_bytes_per_token",
    "us_per_kv_token",
    "us_per_item",
    "us_per_request",
    "exchange_us_per_item",
    "exchange_us_per_item_intranode",
    "exchange_us_fixed",
)


@dataclass(frozen=True)
class LayerKind:
    """One kind of attention layer and its per-layer costs (see the module docstring)."""

    kind: str
    layers: int
    kv_bytes_per_token: float = 0.0
    us_per_kv_token: float = 0.0
    us_per_item: float = 0.0
    us_per_request: float = 0.0
    exchange_us_per_item: float = 0.0
    exchange_us_per_item_intranode: float | None = None  # None: exchange_us_per_item
    exchange_us_fixed: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer kind must be one of {LAYER_KINDS}, got {self.kind!r}")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"layer kind {self.kind!r}: 'layers' must be a positive int")
        for f in _PER_LAYER:
            v = getattr(self, f)
            if v is None and f == "exchange_us_per_item_intranode":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ValueError(f"layer kind {self.kind!r}: '{f}' must be a number >= 0, "
                                 f"got {v!r}")
        if self.kind not in _SPLIT_EXCHANGE and (
                self.exchange_us_per_item or self.exchange_us_fixed
                or self.exchange_us_per_item_intranode):
            raise ValueError(f"layer kind {self.kind!r}: only {_SPLIT_EXCHANGE} pay a "
                             "candidate exchange")
        if self.kind in _NO_KV and (self.kv_bytes_per_token or self.us_per_kv_token):
            raise ValueError(f"layer kind {self.kind!r} holds no KV per token: "
                             "'kv_bytes_per_token' and 'us_per_kv_token' must be 0")

    @property
    def intranode_us(self) -> float:
        v = self.exchange_us_per_item_intranode
        return self.exchange_us_per_item if v is None else v

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerKind":
        if not isinstance(d, Mapping):
            raise ValueError("each 'attention_layers' entry must be a JSON object")
        unknown = sorted(set(d) - {"kind", "layers", *_PER_LAYER, "$comment"})
        if unknown:
            raise ValueError(f"attention_layers: unknown field(s) {', '.join(unknown)}")
        return cls(**{k: v for k, v in d.items() if k != "$comment"})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "layers": self.layers}
        out.update({f: getattr(self, f) for f in _PER_LAYER if getattr(self, f) is not None})
        return out


def aggregate(kinds: Sequence[LayerKind], base: Mapping[str, float]) -> dict[str, Any]:
    """The all-layer coefficients of ``kinds`` added to ``base`` (the kind-independent parts:
    q/o reads and the (q, o, lse) exchange of a guest item). Returns the ``CostProfile``
    fields it sets."""
    if not kinds:
        raise ValueError("attention_layers must list at least one layer kind")
    names = [k.kind for k in kinds]
    if len(set(names)) != len(names):
        raise ValueError(f"attention_layers: each kind at most once, got {names}")

    def total(f: str) -> float:
        return math.fsum(k.layers * getattr(k, f) for k in kinds)

    slope = total("us_per_kv_token")
    if slope <= 0:
        raise ValueError("attention_layers: some kind must grow with KV (us_per_kv_token > 0)")
    ex = base["exchange_us_per_item"] + total("exchange_us_per_item")
    near_base = base.get("exchange_us_per_item_intranode")
    near = (base["exchange_us_per_item"] if near_base is None else near_base) + math.fsum(
        k.layers * k.intranode_us for k in kinds)
    return {
        "attn_us_per_kv_token": slope,
        "attn_us_per_item": base["attn_us_per_item"] + total("us_per_item"),
        "attn_us_per_request": base.get("attn_us_per_request", 0.0) + total("us_per_request"),
        "exchange_us_per_item": ex,
        "exchange_us_per_item_intranode": near,
        "exchange_us_fixed": base["exchange_us_fixed"] + total("exchange_us_fixed"),
        "kv_bytes_per_token": math.ceil(total("kv_bytes_per_token")),
    }


def family(kinds: Sequence[LayerKind], attention: str) -> str:
    """A short label: ``dense-mla``, ``dsa``, ``csa+hca+window``, ``dense-gqa+linear``..."""
    if not kinds:
        return f"dense-{attention}"
    return "+".join(f"dense-{attention}" if k.kind == "dense" else k.kind for k in kinds)
