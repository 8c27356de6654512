"""Cost profiles: the one step-time model shared by the ``dcp`` planner and the simulator.

A profile is a JSON file (``sglang_dcp/profiles/<name>.json``) with every coefficient in
**microseconds per decode step, summed over all layers**, so callers never need layer counts.
Each file carries its ``provenance``: which published figures it was derived from and the
arithmetic. The shipped profiles are derived from published figures, not measured here.

Step-time model (one decode step of the whole DP-attention + EP cluster)::

    rank_time_r = attn_us_fixed + attn_us_per_kv_token * kv_tokens_r
                + attn_us_per_item * items_r                      # local requests + guest queries
                + exchange_us_per_item * (guest_in_r + guest_out_r)          # across nodes
                - (exchange_us_per_item - exchange_us_per_item_intranode) * near_r
                + merge_us_per_part * guest_out_r                 # remote partials merged at home
                + max(compute_us_floor, compute_us_per_token * batch_r)
                + attn_us_per_request * batch_r     # window / linear-state part, at home only
    step_us     = max_r rank_time_r
                + moe_us_fixed + moe_us_per_token * max_r batch_r
                + exchange_us_fixed * [any guest item anywhere]

``moe`` uses the *largest* batch of any rank because the EP dispatch/combine is a barrier every
layer: every rank waits for the slowest one, so the busiest rank's batch sets the MoE time for
all. For the same reason the whole step is the max over ranks, not the mean.
``guest_in_r``: queries rank r computes for requests homed elsewhere (receive q, send (o, lse)).
``guest_out_r``: remote shards of requests homed at r (send q, receive (o, lse), merge).
``near_r``: those of rank r's guest items (in and out) whose peer sits on the same node
(``ClusterSpec.ranks_per_node``): they pay NVLink rates, ``exchange_us_per_item_intranode``.
That coefficient is optional in the JSON (``costs_us``): without it every item pays
``exchange_us_per_item``, the across-node (RDMA) rate. ``attn_us_per_request`` is optional too
(default 0). A profile may instead list its attention layers by kind (``attention_layers``:
dense, DSA, CSA, HCA, window, linear); ``layer_kinds.py`` adds them into these coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from sglang_dcp.planner.base import ClusterSpec
from sglang_dcp.planner.layer_kinds import LayerKind, family
from sglang_dcp.planner.profile_io import (  # noqa: F401 - re-exported
    _COST_FIELDS,
    PROFILE_DIR,
    available_profiles,
    load_profile,
    profile_from_dict,
    profile_to_dict,
)

_ATTENTION_KINDS = ("mla", "gqa", "mha")  # what a guest item ships (exchange/wire.py)


@dataclass(frozen=True)
class CostProfile:
    """Per-step cost coefficients (µs per decode step, all layers) for one model on one GPU."""

    name: str
    model: str
    hardware: str
    attention: str  # "mla" | "gqa" | "mha"
    page_size: int  # KV page, tokens
    kv_capacity_tokens: int  # default KV capacity per rank, tokens, multiple of page_size
    kv_bytes_per_token: int  # all layers
    ep_size: int  # EP degree the MoE figures assume
    attn_us_fixed: float  # launch floor of the attention kernels, per step
    attn_us_per_kv_token: float  # per KV token resident on the rank
    attn_us_per_item: float  # per attention item (query row) on the rank
    exchange_us_fixed: float  # per step, once any guest item exists in the cluster
    exchange_us_per_item: float  # per guest item, charged to both sender and holder
    merge_us_per_part: float  # per remote partial merged at home
    moe_us_fixed: float  # dispatch + combine latency floor, per step
    moe_us_per_token: float  # dispatch + combine, per token of the busiest rank's batch
    compute_us_floor: float  # weight reads per step (decode is bandwidth bound below the knee)
    compute_us_per_token: float  # activated-parameter FLOPs per token of the rank's batch
    prefill_us_per_token: float  # prefill(L) = a*L + b*L^2 on one prefill instance
    prefill_us_per_token_sq: float
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # per guest item whose peer is on the same node (NVLink); None: exchange_us_per_item
    exchange_us_per_item_intranode: float | None = None
    # per request at its home (window / linear-state attention); 0 for dense profiles
    attn_us_per_request: float = 0.0
    # the layer kinds the attention coefficients were summed from (layer_kinds.py); () = dense
    attention_layers: tuple[LayerKind, ...] = ()
    # with attention_layers: the JSON's kind-independent costs_us values, for to_dict
    layer_base: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # GB/s a PD transfer delivers into one decode rank (prefill -> decode KV); None: not given
    pd_gbps_per_rank: float | None = None

    def __post_init__(self) -> None:
        for f in ("name", "model", "hardware"):
            if not isinstance(getattr(self, f), str) or not getattr(self, f):
                raise ValueError(f"cost profile: field '{f}' must be a non-empty string")
        if self.attention not in _ATTENTION_KINDS:
            raise ValueError(
                f"cost profile {self.name!r}: field 'attention' must be one of "
                f"{_ATTENTION_KINDS}, got {self.attention!r}"
            )
        for f in ("page_size", "kv_capacity_tokens", "kv_bytes_per_token", "ep_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(
                    f"cost profile {self.name!r}: field '{f}' must be a positive int, got {v!r}"
                )
        if self.kv_capacity_tokens % self.page_size:
            raise ValueError(
                f"cost profile {self.name!r}: field 'kv_capacity_tokens' "
                f"({self.kv_capacity_tokens}) must be a multiple of page_size {self.page_size}"
            )
        for f in _COST_FIELDS:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(
                    f"cost profile {self.name!r}: field '{f}' must be a number, got {v!r}"
                )
            if v < 0:
                raise ValueError(f"cost profile {self.name!r}: field '{f}' must be >= 0, got {v}")
        v = self.exchange_us_per_item_intranode
        if v is None:
            object.__setattr__(self, "exchange_us_per_item_intranode",
                               float(self.exchange_us_per_item))
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise ValueError(f"cost profile {self.name!r}: field "
                             f"'exchange_us_per_item_intranode' must be a number >= 0, got {v!r}")
        v = self.attn_us_per_request
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise ValueError(f"cost profile {self.name!r}: field 'attn_us_per_request' must be "
                             f"a number >= 0, got {v!r}")
        v = self.pd_gbps_per_rank
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not 0 < v < math.inf):
            raise ValueError(f"cost profile {self.name!r}: field 'pd_gbps_per_rank' must be a "
                             f"number > 0, got {v!r}")
        if self.attn_us_per_kv_token <= 0:
            raise ValueError(
                f"cost profile {self.name!r}: field 'attn_us_per_kv_token' must be > 0"
            )
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))
        object.__setattr__(self, "attention_layers", tuple(self.attention_layers))
        object.__setattr__(self, "layer_base", MappingProxyType(dict(self.layer_base)))

    @property
    def family(self) -> str:
        """Attention family label: ``dense-mla``, ``dsa``, ``csa+hca+window``, ..."""
        return family(self.attention_layers, self.attention)

    # ---- per-rank terms -------------------------------------------------------------------

    def attention_us(self, kv_tokens: float, items: int) -> float:
        """Attention kernel time on one rank holding ``kv_tokens`` over ``items`` query rows."""
        return (
            self.attn_us_fixed
            + self.attn_us_per_kv_token * kv_tokens
            + self.attn_us_per_item * items
        )

    def exchange_us(self, guest_in: int, guest_out: int, near: int = 0) -> float:
        """Per-rank CP exchange time, excluding the cluster-wide fixed cost; ``near`` of the
        ``guest_in + guest_out`` items have their peer on the same node."""
        return (self.exchange_us_per_item * (guest_in + guest_out)
                - self.near_discount_us() * near)

    def near_discount_us(self) -> float:
        """What one guest item saves when its peer is on the same node (>= 0 in practice)."""
        return self.exchange_us_per_item - self.exchange_us_per_item_intranode

    def item_exchange_us(self, same_node: bool) -> float:
        """Exchange cost of one guest item on each of its two ranks."""
        return self.exchange_us_per_item_intranode if same_node else self.exchange_us_per_item

    def merge_us(self, parts: int) -> float:
        """LSE merge at home of ``parts`` remote partials."""
        return self.merge_us_per_part * parts

    def compute_us(self, batch: int) -> float:
        """Non-attention compute on one rank: weight-read floor or FLOPs, whichever is larger."""
        return max(self.compute_us_floor, self.compute_us_per_token * batch)

    def moe_us(self, max_batch: int) -> float:
        """MoE dispatch + combine for the step; pass the LARGEST rank batch (EP is a barrier)."""
        return self.moe_us_fixed + self.moe_us_per_token * max_batch

    def rank_time_us(
        self, kv_tokens: float, items: int, batch: int, guest_in: int = 0, guest_out: int = 0,
        near: int = 0,
    ) -> float:
        """Everything one rank does before it waits in the MoE barrier."""
        return (
            self.attention_us(kv_tokens, items)
            + self.exchange_us(guest_in, guest_out, near)
            + self.merge_us(guest_out)
            + self.compute_us(batch)
        ) + self.attn_us_per_request * batch

    def step_time_us(
        self,
        kv_tokens: Sequence[float],
        items: Sequence[int],
        batch: Sequence[int],
        guest_in: Sequence[int] | None = None,
        guest_out: Sequence[int] | None = None,
        near: Sequence[int] | None = None,
    ) -> float:
        """Predicted decode step time of the cluster; each argument has one entry per rank."""
        n = len(kv_tokens)
        gin = guest_in if guest_in is not None else (0,) * n
        gout = guest_out if guest_out is not None else (0,) * n
        nr = near if near is not None else (0,) * n
        if not (len(items) == len(batch) == len(gin) == len(gout) == len(nr) == n):
            raise ValueError("step_time_us: all per-rank sequences must have the same length")
        worst = max(
            self.rank_time_us(kv_tokens[r], items[r], batch[r], gin[r], gout[r], nr[r])
            for r in range(n)
        )
        any_guest = any(gin) or any(gout)
        return worst + self.moe_us(max(batch)) + (self.exchange_us_fixed if any_guest else 0.0)

    def prefill_us(self, prompt_len: int) -> float:
        """Prefill time of one prompt (TTFT contribution), µs."""
        return self.prefill_us_per_token * prompt_len + self.prefill_us_per_token_sq * prompt_len**2

    def break_even_tokens(self) -> int:
        """Smallest page-aligned shard whose attention time pays for its holder's overhead.

        The holder of a guest shard pays one exchange item and one attention item; the shard is
        worth moving only if it takes at least that much attention time off the home rank.
        """
        per_guest = self.exchange_us_per_item_intranode + self.attn_us_per_item
        tokens = math.ceil(per_guest / self.attn_us_per_kv_token)
        return max(self.page_size, -(-tokens // self.page_size) * self.page_size)

    def cluster(
        self, num_ranks: int, kv_capacity: int | None = None, page_size: int | None = None,
        ranks_per_node: int = 8,
    ) -> ClusterSpec:
        """A uniform cluster of ``num_ranks`` with this profile's defaults."""
        return ClusterSpec.uniform(
            num_ranks,
            self.kv_capacity_tokens if kv_capacity is None else kv_capacity,
            self.page_size if page_size is None else page_size,
            ranks_per_node,
        )

    # ---- (de)serialisation ----------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "CostProfile":
        return profile_from_dict(cls, data, source=source)

    def to_dict(self) -> dict[str, Any]:
        return profile_to_dict(self)


