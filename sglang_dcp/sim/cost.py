"""The planner's cost profile evaluated for many simulator steps at once.

The step-time model lives in ``sglang_dcp.planner.profile.CostProfile`` (one model for planner
and simulator). This file only evaluates it for many steps at once: within a chunk of steps the
batch and guest items are fixed and only KV grows, and a rank's time is affine in its KV
(``attention_us`` is ``fixed + per_kv_token * kv + ...``), so

    rank_us[k, r] = rank_time_us(0, items_r, batch_r, guest_in_r, guest_out_r) + slope * kv[k, r]
    step_us[k]    = max_r rank_us[k, r] + moe_us(max_r batch_r) + exchange_us_fixed * [any guest]

with ``slope = attention_us(1, 0) - attention_us(0, 0)``. ``test_sim_engine`` checks this
against ``CostProfile.step_time_us`` on random loads.

``exchange_wire`` says what a rank's exchange is charged for (``planner.wire_cost``, the
functions the ``dcp`` planner predicts with): ``scoped`` (the default: what the server's
exchange ships, every rank sends each peer one bucket per round of the step's busiest peer
pair, whatever its own items; the peers are its node's ranks while no pair crosses nodes, else
every rank), ``bucketed`` (every rank, always: the server before scopes) or ``items`` (its own
guest items in and out, the profile's per-item model). Either way a home merges only its real
remote partials.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sglang_dcp.planner.base import ClusterSpec
from sglang_dcp.planner.profile import CostProfile
from sglang_dcp.planner.wire_cost import DEFAULT_WIRE, EXCHANGE_WIRES, bucketed_exchange_us
from sglang_dcp.sim.prefill import DEFAULT_CHUNK, shard_prefill_exchange_us

DEFAULT_PROFILE = "deepseek-v3-h200"


def cluster_for(profile: CostProfile, num_ranks: int, kv_capacity: int | None = None,
                ranks_per_node: int = 8) -> ClusterSpec:
    """Uniform ranks with the profile's KV capacity (or ``kv_capacity`` tokens, page-rounded)."""
    if kv_capacity is not None:
        kv_capacity -= kv_capacity % profile.page_size
    return profile.cluster(num_ranks, kv_capacity, ranks_per_node=ranks_per_node)


class StepModel:
    """Vectorized step time of one lockstep decode step, in milliseconds.

    ``set_loads`` caches the per-rank constant part whenever batch or guest items change;
    ``step_ms`` then costs one numpy expression per chunk of steps.
    """

    def __init__(self, profile: CostProfile, num_ranks: int, migration_gbps: float = 40.0, *,
                 kv_capacity: int | None = None, prefill_chunk: int = DEFAULT_CHUNK,
                 exchange_wire: str = DEFAULT_WIRE, ranks_per_node: int = 8) -> None:  # fmt: skip
        if exchange_wire not in EXCHANGE_WIRES:
            raise ValueError(f"exchange_wire must be one of {EXCHANGE_WIRES}, got {exchange_wire!r}")
        self.profile = profile
        self.num_ranks = num_ranks
        self.exchange_wire = exchange_wire
        self.ranks_per_node = ranks_per_node
        # a prompt longer than this prefills into shards (sim/prefill.py); None: never
        self.kv_capacity = kv_capacity
        self.prefill_chunk = prefill_chunk
        self.slope_us = profile.attention_us(1.0, 0) - profile.attention_us(0.0, 0)
        self.migration_gbps = migration_gbps
        self._base_us = np.zeros(num_ranks)
        self._extra_us = 0.0
        self.set_loads([0] * num_ranks, [0] * num_ranks, [0] * num_ranks)

    def set_loads(self, batch, guest_in, guest_out, near=None, busiest_pair: int = 0,
                  cross: bool = True) -> None:  # fmt: skip
        """batch, guest_in, guest_out, near: [num_ranks] ints (see ``CostProfile``);
        ``busiest_pair``: the most queries one home sends one rank (the wire's bucket);
        ``cross``: some pair crosses nodes (``scoped`` exchanges within nodes otherwise)."""
        p, W = self.profile, self.num_ranks
        b = [int(x) for x in batch]
        gi = [int(x) for x in guest_in]
        go = [int(x) for x in guest_out]
        nr = [0] * W if near is None else [int(x) for x in near]
        if self.exchange_wire != "items":  # the same rows on every rank, merges per part
            wire = bucketed_exchange_us(p, W, busiest_pair, ranks_per_node=self.ranks_per_node,
                                        cross=cross or self.exchange_wire == "bucketed")
            base = [p.rank_time_us(0.0, b[r] + gi[r], b[r]) + p.merge_us(go[r]) + wire
                    for r in range(W)]  # fmt: skip
        else:
            base = [p.rank_time_us(0.0, b[r] + gi[r], b[r], gi[r], go[r], nr[r])
                    for r in range(W)]  # fmt: skip
        self._base_us = np.array(base)
        any_guest = any(gi) or any(go)
        self._extra_us = p.moe_us(max(b)) + (p.exchange_us_fixed if any_guest else 0.0)

    def step_ms(self, kv: np.ndarray) -> np.ndarray:
        """kv: [num_steps, num_ranks] KV tokens resident per rank. Returns [num_steps] ms."""
        rank_us = self._base_us[None, :] + self.slope_us * kv
        return (rank_us.max(axis=1) + self._extra_us) * 1e-3

    def prefill_ms(self, input_len: np.ndarray) -> np.ndarray:
        """Prefill time per prompt: the profile's ``prefill_us``, plus the exchange of prefill
        into shards for a prompt longer than ``kv_capacity`` (``sim/prefill.py``)."""
        p, cap, C = self.profile, self.kv_capacity, self.prefill_chunk
        return np.array([
            p.prefill_us(int(x))
            + (shard_prefill_exchange_us(p, int(x), kv_capacity=cap, chunk=C)
               if cap is not None and x > cap else 0.0)
            for x in input_len], dtype=np.float64) * 1e-3  # fmt: skip

    def migration_ms(self, tokens: int) -> float:
        """Moving sealed KV between ranks: bytes / link bandwidth (the profile has no term yet;
        40 GB/s is DeepEP's internode RDMA figure, reference/anchors.md section 2.8)."""
        return tokens * self.profile.kv_bytes_per_token / (self.migration_gbps * 1e9) * 1e3


def scaled_exchange(profile: CostProfile, scale: float) -> CostProfile:
    """A COUNTERFACTUAL copy of ``profile`` whose exchange costs (``exchange_us_fixed`` and the
    per-item rates, so the bucketed wire too) are ``scale`` times the profile's: for attributing
    what holds ``dcp`` back (``bench/sim_diagnose.py``), never a claim about any hardware."""
    if not 0.0 <= scale < float("inf"):
        raise ValueError(f"exchange scale must be a number >= 0, got {scale!r}")
    if scale == 1.0:
        return profile
    f = {k: getattr(profile, k) * scale for k in (
        "exchange_us_fixed", "exchange_us_per_item", "exchange_us_per_item_intranode")}
    return dataclasses.replace(profile, name=f"{profile.name}@exchange x{scale:g}", **f)
