"""The ``--dcp-*`` serving flags, resolved once by the launcher and read by the DP controller.

SGLang spawns the DP controller itself, so the launcher hands the flags over as JSON in the
environment variable ``env.SERVE_OPTIONS_VAR`` (spawned processes inherit the environment).
Pure Python: no SGLang import.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from sglang_dcp import env
from sglang_dcp.exchange.wire import DEFAULT_CAPACITY

POLICY_CHOICES = ("dcp", "round_robin", "total_tokens", "uniform", "off")
DEFAULT_POLICY = "dcp"
DEFAULT_PROFILE = "qwen3-235b-h200"
ATTENTION_BACKEND = "dcp_triton"  # backend.NAME (kept here: this module imports no SGLang)
# SGLang's dense attention backends the DCP wrapper goes around (``backend.py``): unsplit rows run
# on the one the user chose (or SGLang's default), split rows' own part on ours, merged by LSE.
# The wrapper needs only that a backend reads a batch's lengths from ``seq_lens``/``seq_lens_cpu``/
# ``seq_lens_sum`` and its slots from ``req_to_token``, as every dense backend of SGLang 0.5.21 does.
SHARDABLE_BACKENDS = (
    "triton", "torch_native", "flex_attention", "fa3", "fa4", "flashinfer", "flashmla",
    "trtllm_mla", "cutedsl_mla", "tokenspeed_mla", "trtllm_mha", "aiter", "intel_amx",
    ATTENTION_BACKEND,
)  # fmt: skip
# Sparse/compressed attention: a split request would need the indexer's top-k over every shard
SPARSE_BACKENDS = ("dsa", "nsa", "qsa", "dsv4", "compressed")
# Later requests the DP controller may admit ahead of a waiting one before it blocks them.
DEFAULT_QUEUE_MAX_BYPASS = 16
# Per-peer capacity of the static exchange (queries one rank sends one peer per round); a step
# needing more runs eagerly in rounds (sglang_dcp:exchange_eager_steps_total).
DEFAULT_MAX_GUEST_ITEMS = DEFAULT_CAPACITY
DEFAULT_TRANSFER_CHUNK_MB = 32  # shard-move staging, twice (exchange/move_staging.py)
SPLIT_RULES = ("fit", "gain", "auto")  # planner/dcp.py


class OptionsError(ValueError):
    """An invalid ``--dcp-*`` combination; the message is one actionable line."""


@dataclass(frozen=True, slots=True)
class DcpOptions:
    """What the DP controller needs to build its planner. ``policy == "off"``: SGLang dispatches."""

    policy: str = DEFAULT_POLICY
    profile: str = DEFAULT_PROFILE
    max_degree: int = 1
    min_shard_tokens: int | None = None
    kv_capacity: int | None = None  # planner's KV tokens per rank (None: SGLang's pool size)
    queue_max_bypass: int = DEFAULT_QUEUE_MAX_BYPASS  # see dispatcher.DcpDispatcher
    slo_tpot_ms: float | None = None  # the planner's step budget (dcp step_slo_ms)
    split_rule: str = "fit"  # dcp split_rule: fit | gain | auto
    split_cost_k: float = 4.0  # dcp: with a step budget, what a split for fit must be worth
    max_guest_items: int = DEFAULT_MAX_GUEST_ITEMS  # exchange queries per peer per round
    ranks_per_node: int | None = None  # the exchange's node scope (wire.scope_peers); None: 1 node
    transfer_chunk_mb: int = DEFAULT_TRANSFER_CHUNK_MB  # shard moves copy in pieces this big
    rebalance_threshold: float | None = None  # dcp: migrate sealed KV while requests wait
    # prefill into shards (issue 18): SGLang's --chunked-prefill-size when sharding, else None
    prefill_chunk: int | None = None

    @property
    def enabled(self) -> bool:
        return self.policy != "off"

    @property
    def sharding(self) -> bool:
        """A request's KV may span ranks: the scheduler data path and the backend are on."""
        return self.enabled and self.max_degree > 1

    def policy_options(self) -> dict:
        """Keyword options for ``planner.make_policy(self.policy, ...)``."""
        if self.policy == "dcp":
            return {"max_degree": self.max_degree, "min_shard_tokens": self.min_shard_tokens,
                    "step_slo_ms": self.slo_tpot_ms, "split_rule": self.split_rule,
                    "split_cost_k": self.split_cost_k,
                    "rebalance_threshold": self.rebalance_threshold,
                    "prefill_chunk": self.prefill_chunk,
                    "wire_capacity": self.max_guest_items}  # the bucketed wire it predicts
        if self.policy == "uniform":
            return {"group_size": self.max_degree}
        return {}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DcpOptions":
        return cls(**json.loads(text))

    @classmethod
    def from_env(cls) -> "DcpOptions":
        """The launcher's options; ``off`` when started without the launcher."""
        text = env.serve_options_json()
        return cls.from_json(text) if text else cls(policy="off")


def resolve(
    *,
    policy: str | None,
    profile: str | None,
    max_degree: int | None,
    min_shard_tokens: int | None,
    dp_size: int,
    enable_dp_attention: bool,
    load_balance_method_given: bool,
    kv_capacity: int | None = None,
    tp_size: int | None = None,
    disable_radix_cache: bool = True,
    attention_backend: str | None = None,
    queue_max_bypass: int | None = None,
    slo_tpot_ms: float | None = None,
    split_rule: str | None = None,
    split_cost_k: float | None = None,
    max_guest_items: int | None = None,
    rebalance_threshold: float | None = None,
    transfer_chunk_mb: int | None = None,
    pd_decode_prefix_cache: bool = False,
    ranks_per_node: int | None = None,
    nnodes: int = 1,
) -> DcpOptions:
    """Check the flags (``None`` = not given) against each other and the server shape.

    Without any ``--dcp-*`` flag the planner is on (policy ``dcp``) whenever there is something
    to place (``--dp-size > 1`` with ``--enable-dp-attention``) and quietly off otherwise. Its
    max degree then defaults to ``--dp-size`` when the server can shard KV (``--tp-size ==
    --dp-size``, attention backend unset or one of ``SHARDABLE_BACKENDS``, not a PD decode
    server), else to 1. The radix cache may stay on (``--disable-radix-cache`` is accepted, never
    required).
    """
    given = {
        "--dcp-policy": policy,
        "--dcp-cost-profile": profile,
        "--dcp-max-degree": max_degree,
        "--dcp-min-shard-tokens": min_shard_tokens,
        "--dcp-kv-capacity": kv_capacity,
        "--dcp-queue-max-bypass": queue_max_bypass,
        "--dcp-slo-tpot-ms": slo_tpot_ms,
        "--dcp-split-rule": split_rule,
        "--dcp-split-cost-k": split_cost_k,
        "--dcp-max-guest-items": max_guest_items,
        "--dcp-rebalance-threshold": rebalance_threshold,
        "--dcp-transfer-chunk-mb": transfer_chunk_mb,
        "--dcp-ranks-per-node": ranks_per_node,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if policy is not None and policy not in POLICY_CHOICES:
        raise OptionsError(f"--dcp-policy {policy!r}: choose from {', '.join(POLICY_CHOICES)}")
    if policy == "off":
        if extra := sorted(set(given) - {"--dcp-policy"}):
            raise OptionsError(f"{', '.join(extra)} need(s) a planner; drop it or pick another "
                               "--dcp-policy")
        return DcpOptions(policy="off")
    servable = dp_size > 1 and enable_dp_attention
    if not servable:
        if given:
            raise OptionsError(
                f"{', '.join(sorted(given))} need(s) --enable-dp-attention with --dp-size > 1 "
                f"(got --dp-size {dp_size}{'' if enable_dp_attention else ' without DP attention'})"
            )
        return DcpOptions(policy="off")
    if load_balance_method_given:
        # SGLang's own dispatcher (round_robin, total_tokens, ...) stays selectable.
        if given:
            raise OptionsError(
                f"--load-balance-method selects SGLang's own dispatcher; {', '.join(sorted(given))} "
                "need(s) the sglang-dcp planner (--load-balance-method dcp, the default)"
            )
        return DcpOptions(policy="off")
    policy = policy or DEFAULT_POLICY
    tp_size = dp_size if tp_size is None else tp_size
    shard_blockers = []
    if pd_decode_prefix_cache:  # issue 24: KV landing in shards (pd_landing.py) sends whole
        shard_blockers.append(  # prompts; a decode-side prefix would need its ranges on holders
            "no --disaggregation-decode-enable-radix-cache on a PD decode server (KV landing "
            "in shards is built without a decode-side prefix cache)"
        )
    # The radix cache stays on with sharding (issue 26): unsplit requests use it as in plain
    # SGLang, split ones neither match nor insert (``sglang/radix.py``); the flag is accepted.
    del disable_radix_cache
    if tp_size != dp_size:
        shard_blockers.append(f"--tp-size == --dp-size (got {tp_size} and {dp_size})")
    if attention_backend in SPARSE_BACKENDS:
        shard_blockers.append(
            f"dense attention (--attention-backend {attention_backend} is sparse or compressed: "
            "a split request would need its top-k over every shard)"
        )
    elif attention_backend not in (None, *SHARDABLE_BACKENDS):
        shard_blockers.append(
            f"a dense attention backend ({', '.join(SHARDABLE_BACKENDS)}; got "
            f"{attention_backend}, which the DCP exchange has not been checked with)"
        )
    if max_degree is not None:
        if max_degree < 1:
            raise OptionsError(f"--dcp-max-degree must be >= 1, got {max_degree}")
        if max_degree > dp_size:
            raise OptionsError(f"--dcp-max-degree {max_degree} exceeds --dp-size {dp_size}")
        if policy not in ("dcp", "uniform"):
            raise OptionsError(
                f"--dcp-max-degree applies to --dcp-policy dcp or uniform, not {policy}")
        if max_degree > 1 and shard_blockers:
            raise OptionsError(
                f"--dcp-max-degree {max_degree} spreads KV over ranks and needs "
                + "; ".join(shard_blockers)
            )
    elif policy == "dcp" and not shard_blockers:
        max_degree = dp_size
    if kv_capacity is not None and kv_capacity < 1:
        raise OptionsError(f"--dcp-kv-capacity must be >= 1, got {kv_capacity}")
    if min_shard_tokens is not None:
        if policy != "dcp":
            raise OptionsError(f"--dcp-min-shard-tokens applies to --dcp-policy dcp, not {policy}")
        if min_shard_tokens < 1:
            raise OptionsError(f"--dcp-min-shard-tokens must be >= 1, got {min_shard_tokens}")
    if queue_max_bypass is not None:
        if policy not in ("dcp", "uniform"):
            raise OptionsError(
                f"--dcp-queue-max-bypass applies to --dcp-policy dcp or uniform (the policies "
                f"whose requests wait in the DP controller), not {policy}"
            )
        if queue_max_bypass < 0:
            raise OptionsError(f"--dcp-queue-max-bypass must be >= 0, got {queue_max_bypass}")
    if profile is not None and policy != "dcp":
        raise OptionsError(f"--dcp-cost-profile applies to --dcp-policy dcp, not {policy}")
    for flag, value in (("--dcp-slo-tpot-ms", slo_tpot_ms), ("--dcp-split-rule", split_rule),
                        ("--dcp-split-cost-k", split_cost_k)):
        if value is not None and policy != "dcp":
            raise OptionsError(f"{flag} applies to --dcp-policy dcp, not {policy}")
    if rebalance_threshold is not None and (policy != "dcp" or (max_degree or 1) < 2):
        raise OptionsError(
            "--dcp-rebalance-threshold migrates sealed KV between ranks: it needs --dcp-policy "
            "dcp and --dcp-max-degree > 1"
        )
    if rebalance_threshold is not None and not rebalance_threshold >= 1.0:
        raise OptionsError(
            f"--dcp-rebalance-threshold is a max/mean KV ratio, >= 1; got {rebalance_threshold}")
    if slo_tpot_ms is not None and not slo_tpot_ms > 0:
        raise OptionsError(f"--dcp-slo-tpot-ms must be > 0, got {slo_tpot_ms}")
    if split_cost_k is not None and not split_cost_k >= 0:
        raise OptionsError(f"--dcp-split-cost-k must be >= 0 (0: off), got {split_cost_k}")
    if split_rule is not None and split_rule not in SPLIT_RULES:
        raise OptionsError(
            f"--dcp-split-rule must be one of {', '.join(SPLIT_RULES)}, got {split_rule!r}")
    if max_guest_items is not None:
        if max_guest_items < 1:
            raise OptionsError(f"--dcp-max-guest-items must be >= 1, got {max_guest_items}")
        if (max_degree or 1) < 2:
            raise OptionsError(
                "--dcp-max-guest-items sizes the KV-sharding exchange; it needs "
                "--dcp-max-degree > 1"
            )
    if transfer_chunk_mb is not None and not transfer_chunk_mb >= 1:
        raise OptionsError(f"--dcp-transfer-chunk-mb must be >= 1, got {transfer_chunk_mb}")
    rpn = ranks_per_node if ranks_per_node is not None else (  # default: --dp-size / --nnodes
        dp_size // nnodes if nnodes > 1 and dp_size % nnodes == 0 else dp_size)
    if rpn < 1 or dp_size % rpn:
        raise OptionsError(
            f"--dcp-ranks-per-node {rpn} must be >= 1 and divide --dp-size {dp_size}")
    opts = DcpOptions(
        policy=policy,
        profile=profile or DEFAULT_PROFILE,
        max_degree=max_degree or 1,
        min_shard_tokens=min_shard_tokens,
        kv_capacity=kv_capacity,
        queue_max_bypass=(
            DEFAULT_QUEUE_MAX_BYPASS if queue_max_bypass is None else queue_max_bypass
        ),
        slo_tpot_ms=slo_tpot_ms,
        split_rule=split_rule or "fit",
        split_cost_k=4.0 if split_cost_k is None else float(split_cost_k),
        max_guest_items=DEFAULT_MAX_GUEST_ITEMS if max_guest_items is None else max_guest_items,
        rebalance_threshold=rebalance_threshold,
        transfer_chunk_mb=transfer_chunk_mb or DEFAULT_TRANSFER_CHUNK_MB,
        ranks_per_node=rpn if rpn < dp_size else None,
    )
    if policy == "dcp":
        from sglang_dcp.planner import load_profile

        try:
            load_profile(opts.profile)
        except ValueError as e:
            raise OptionsError(f"--dcp-cost-profile: {e}") from None
    return opts

