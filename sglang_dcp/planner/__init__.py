"""The planner: where each request's home rank and KV shards live. Pure Python (no torch).

``make_policy(name, cluster, profile, **options)`` builds one of ``POLICIES``; every policy
implements ``Policy`` (``base.py``). Cost profiles (``load_profile``) hold the shared step-time
model that both ``dcp`` and the simulator use.
"""

from __future__ import annotations

import os

from sglang_dcp.planner.base import ClusterSpec, Migration, Policy
from sglang_dcp.planner.baselines import (
    RoundRobinPolicy,
    TotalTokensPolicy,
    TotalTokensSnapshotPolicy,
)
from sglang_dcp.planner.dcp import DcpPolicy
from sglang_dcp.planner.profile import CostProfile, available_profiles, load_profile
from sglang_dcp.planner.state import KVOverflowError, LedgerPolicy
from sglang_dcp.planner.uniform import UniformPolicy

POLICIES = ("round_robin", "total_tokens", "total_tokens_sglang", "uniform", "dcp")

_OPTIONS = {
    "round_robin": (),
    "total_tokens": (),
    "total_tokens_sglang": ("publish_every_steps",),
    "uniform": ("group_size",),
    "dcp": ("max_degree", "min_shard_tokens", "min_gain_us", "batch_slack", "rebalance_threshold",
            "home_rule", "fixed_exchange", "split_rule", "split_min_free", "step_slo_ms",
            "step_gate", "step_headroom", "prefill_chunk", "hold",
            "home_tie", "headroom_always", "age_ms", "age_overshoot", "exchange_wire",
            "wire_capacity", "rejoin", "split_cost_k", "exchange_room_ms",
            "live_quiet_ms", "gain_max_live", "cross_wait_ms"),
}


def make_policy(
    name: str,
    cluster: ClusterSpec,
    profile: CostProfile | str | os.PathLike | None = None,
    **options,
) -> Policy:
    """Build policy ``name`` over ``cluster``.

    ``profile`` (a ``CostProfile``, or a shipped name / JSON path for ``load_profile``) is
    required by ``dcp`` and ignored by the others. Options: ``uniform``: ``group_size``;
    ``dcp``: ``max_degree`` (8), ``min_shard_tokens`` (the profile's break-even shard),
    ``min_gain_us`` (0), ``batch_slack`` (0), ``rebalance_threshold`` (None: no migration),
    ``step_slo_ms`` (None: no step budget), ``step_gate`` ("all"), ``step_headroom`` (True),
    ``home_rule`` ("step" | "batch"), ``split_rule`` ("fit" | "gain" | "auto"),
    ``split_min_free`` (0.2), ``split_cost_k`` (4: with a step budget the fit rule's share rises
    to k x the exchange's start cost / budget; 0: off), ``exchange_wire`` ("scoped" | "bucketed" | "items"), ``wire_capacity`` (16),
    ``exchange_room_ms`` (600 s; 0: off, ``budget.py``), ``gain_max_live`` (8 live requests
    per rank: above it the gain rule yields to fit; 0: off), ``cross_wait_ms`` (inf: a split
    crosses nodes only when no node could ever hold the request; ms: once it has waited that
    long for room inside one node, ``node_first.py``; 0: off),
    ``fixed_exchange`` ("always" | "first" | "extend"), ``prefill_chunk`` (None: the home prefills a split
    request whole; tokens: prefill into shards, the home's transient booked, ``prefill.py``);
    see ``dcp.py``. ``None`` values
    mean "default" (convenient for CLI flags left unset).
    """
    if name not in POLICIES:
        raise ValueError(f"unknown planner policy {name!r}; valid: {', '.join(POLICIES)}")
    options = {k: v for k, v in options.items() if v is not None}
    bad = sorted(set(options) - set(_OPTIONS[name]))
    if bad:
        valid = ", ".join(_OPTIONS[name]) or "none"
        raise ValueError(f"policy {name!r} got unknown option(s) {', '.join(bad)}; valid: {valid}")
    if profile is not None and not isinstance(profile, CostProfile):
        profile = load_profile(profile)
    if name == "round_robin":
        return RoundRobinPolicy(cluster)
    if name == "total_tokens":
        return TotalTokensPolicy(cluster)
    if name == "total_tokens_sglang":
        return TotalTokensSnapshotPolicy(cluster, **options)
    if name == "uniform":
        return UniformPolicy(cluster, **options)
    if profile is None:
        raise ValueError(
            "policy 'dcp' needs a cost profile: pass profile=load_profile(name) or a name "
            f"(shipped: {', '.join(available_profiles())})"
        )
    return DcpPolicy(cluster, profile, **options)


__all__ = [
    "POLICIES",
    "ClusterSpec",
    "CostProfile",
    "DcpPolicy",
    "KVOverflowError",
    "LedgerPolicy",
    "Migration",
    "Policy",
    "RoundRobinPolicy",
    "TotalTokensPolicy",
    "TotalTokensSnapshotPolicy",
    "UniformPolicy",
    "available_profiles",
    "load_profile",
    "make_policy",
]
