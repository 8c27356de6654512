"""sglang-dcp's own command-line flags: their definitions (``add_dcp_args``), the
``--load-balance-method dcp`` spelling, and stripping them before SGLang parses the rest.

Pure Python: argparse only, no SGLang import (the launcher adds SGLang's flags itself).
"""

from __future__ import annotations

import argparse

from sglang_dcp.planner.profile import available_profiles
from sglang_dcp.sglang.demo import DEFAULT_DEMO_MODEL, DEMO_DP_SIZE, DEMO_MODELS
from sglang_dcp.sglang.options import (
    DEFAULT_PROFILE,
    DEFAULT_MAX_GUEST_ITEMS,
    DEFAULT_TRANSFER_CHUNK_MB,
    DEFAULT_QUEUE_MAX_BYPASS,
    POLICY_CHOICES,
    SPLIT_RULES,
)

LB_DCP = "dcp"


def translate_lb_method(argv: list[str]) -> list[str]:
    """``--load-balance-method dcp`` (the default here) is the sglang-dcp planner, spelled as
    ``--dcp-policy dcp``; SGLang's own methods (``round_robin``, ``total_tokens``, ...) pass
    through to SGLang, which then dispatches as it would without sglang-dcp."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--load-balance-method" and i + 1 < len(argv) and argv[i + 1] == LB_DCP:
            out += ["--dcp-policy", "dcp"]
            i += 2
            continue
        if a == f"--load-balance-method={LB_DCP}":
            out += ["--dcp-policy", "dcp"]
            i += 1
            continue
        out.append(a)
        i += 1
    return out


def add_dcp_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sglang-dcp")
    group.add_argument(
        "--demo",
        action="store_true",
        help="Serve the embedded default: a tiny random MoE model (--demo-model; created under "
        "$SGLANG_DCP_CACHE_DIR if missing) on CPU with DP attention over "
        f"{DEMO_DP_SIZE} ranks. Other flags given override the demo's.",
    )
    group.add_argument(
        "--demo-model",
        choices=sorted(DEMO_MODELS),
        default=None,
        help=f"The model --demo serves: {DEFAULT_DEMO_MODEL} (default; GQA) or tiny-deepseek-v3 "
        "(the DeepSeek-V3 architecture: MLA, grouped top-k MoE with a shared expert).",
    )
    group.add_argument(
        "--dcp-policy",
        choices=POLICY_CHOICES,
        default=None,
        help="How the DP controller places requests: 'dcp' (default with --enable-dp-attention "
        "and --dp-size > 1: the sglang-dcp planner balances batch and KV; also spelled "
        "--load-balance-method dcp), the planner's baselines 'round_robin', 'total_tokens' and "
        "'uniform', or 'off' (SGLang's own dispatch; also any other --load-balance-method, e.g. "
        "round_robin). 'routed_dp_rank' in a request pins its home rank.",
    )
    group.add_argument(
        "--dcp-cost-profile",
        metavar="NAME|PATH",
        default=None,
        help="Cost profile of the 'dcp' policy: a shipped name "
        f"({', '.join(available_profiles())}) or a profile JSON path. Default: {DEFAULT_PROFILE}.",
    )
    group.add_argument(
        "--dcp-max-degree",
        type=int,
        metavar="N",
        default=None,
        help="Most ranks one request's KV may span ('dcp'; group size for 'uniform'). > 1 needs "
        "--tp-size == --dp-size and a dense attention backend; unsplit "
        "rows keep that backend (torch_native on CPU), split rows go through the DCP exchange. "
        "Default: --dp-size when those hold, else 1.",
    )
    group.add_argument(
        "--dcp-min-shard-tokens",
        type=int,
        metavar="TOKENS",
        default=None,
        help="Smallest KV shard worth placing on another rank ('dcp'). Default: the cost "
        "profile's break-even shard.",
    )
    group.add_argument(
        "--dcp-kv-capacity",
        type=int,
        metavar="TOKENS",
        default=None,
        help="KV tokens per rank the planner may place (default: SGLang's KV pool size per "
        "rank, max_total_num_tokens). Smaller values keep headroom for a home's whole-prompt "
        "prefill before its sealed shards move out.",
    )
    group.add_argument(
        "--dcp-queue-max-bypass",
        type=int,
        metavar="N",
        default=None,
        help="Requests that do not fit now wait in the DP controller and are retried first fit "
        "whenever a request finishes; once the oldest waiting request has been passed over N "
        "times by later ones, nothing more is admitted ahead of it (no starvation of long "
        f"requests). 0: strict arrival order. Default: {DEFAULT_QUEUE_MAX_BYPASS}.",
    )
    group.add_argument(
        "--dcp-slo-tpot-ms",
        type=float,
        metavar="MS",
        default=None,
        help="Your TPOT SLO as the 'dcp' planner's step budget: a placement whose predicted "
        "decode step (cost profile) exceeds it waits, and a whole placement that would exceed "
        "it is split instead. Default: none (admission bounded by KV only). The simulator's "
        "results (bench/results/sim.md) use it.",
    )
    group.add_argument(
        "--dcp-split-rule",
        choices=SPLIT_RULES,
        default=None,
        help="When 'dcp' splits a request that some rank could hold whole: 'fit' (only for KV "
        "fit or the step budget), 'gain' (also when it lowers the predicted step, while fewer "
        "than 8 requests per rank live), 'auto' (fit for MLA profiles, gain for GQA). "
        "Default: fit.",
    )
    group.add_argument(
        "--dcp-split-cost-k",
        type=float,
        metavar="K",
        default=None,
        help="'dcp' with --dcp-slo-tpot-ms: a request that one rank could hold whole is split "
        "for KV fit only if it, or the cluster's free KV, is at least a share K x (what starting "
        "the exchange adds to every step) / the step budget (bench/NOTES.md, the sweep behind "
        "it). 0 turns the rule off. Default: 4.",
    )
    group.add_argument(
        "--dcp-rebalance-threshold",
        type=float,
        metavar="RATIO",
        default=None,
        help="'dcp' only, with KV sharding: while requests wait in the DP controller for KV, "
        "migrate sealed KV ranges of decoding split requests from the fullest rank to the "
        "emptiest while max/mean KV per rank exceeds RATIO (bounded per step; the request "
        "keeps decoding). Default: off.",
    )
    group.add_argument(
        "--dcp-max-guest-items",
        type=int,
        metavar="N",
        default=None,
        help="Capacity of the static KV-sharding exchange: attention queries one DP rank sends "
        "one peer per layer and round (its buffers are sized once from it, the max running "
        "requests and the KV pool). A step needing more runs eagerly in several rounds "
        f"(counted in sglang_dcp:exchange_eager_steps_total). Default: {DEFAULT_MAX_GUEST_ITEMS}.",
    )
    group.add_argument(
        "--dcp-ranks-per-node",
        type=int,
        metavar="N",
        default=None,
        help="DP ranks per node (consecutive ranks share one). A decode step in which every split "
        "request keeps its KV shards on its home's node runs the exchange within each node only "
        "(each rank ships its node's peers, over NVLink; one graph variant more per bucket), and "
        "the planner puts guest shards on the home's node first. Must divide --dp-size. "
        "Default: --dp-size / --nnodes (one node: every rank).",
    )
    group.add_argument(
        "--dcp-transfer-chunk-mb",
        type=int,
        metavar="MB",
        default=None,
        help="Shard moves copy KV in pieces of at most this many MiB through two staging "
        "buffers of this size, reserved on each DP rank's device before SGLang sizes its KV "
        f"pool (inside --mem-fraction-static; the log says how much). Default: "
        f"{DEFAULT_TRANSFER_CHUNK_MB}.",
    )


def _our_flags() -> tuple[set[str], set[str]]:
    """sglang-dcp's own flags (``add_dcp_args``): those that take no value, those that take one."""
    parser = argparse.ArgumentParser(add_help=False)
    add_dcp_args(parser)
    no_value: set[str] = set()
    with_value: set[str] = set()
    for action in parser._actions:
        (no_value if action.nargs == 0 else with_value).update(action.option_strings)
    return no_value, with_value


def split_argv(argv: list[str]) -> list[str]:
    """Return ``argv`` without sglang-dcp's own flags (what SGLang's parser should see)."""
    no_value, with_value = _our_flags()
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in no_value:
            continue
        if name in with_value:
            skip = "=" not in a
            continue
        out.append(a)
    return out
