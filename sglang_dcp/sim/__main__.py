"""CLI: ``python -m sglang_dcp.sim`` (also installed as ``sglang-dcp-sim``).

Example::

    python -m sglang_dcp.sim --trace ../shared/data/mooncake_conversation_trace.jsonl \\
        --ranks 16 --profile deepseek-v3-h200 --slo-tpot-ms 50 \\
        --policies round_robin,total_tokens,uniform,dcp --out /tmp/sim-conversation
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sglang_dcp.planner import POLICIES, available_profiles, load_profile, make_policy
from sglang_dcp.sim import cost
from sglang_dcp.sim.deploy import DEPLOYMENTS
from sglang_dcp.sim.options import PREFILL_DELAYS
from sglang_dcp.sim.experiment import parse_policy, split_sim_options
from sglang_dcp.sim.workload import load_trace, make_workload, workload_names

DEFAULT_POLICIES = "round_robin,total_tokens,uniform,dcp"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sglang_dcp.sim",
                description="Simulate DP-attention + EP decoding under placement policies and "
                            "find each policy's goodput (max rate within the TPOT SLO).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", type=str, metavar="FILE",
                     help="Mooncake JSONL trace (timestamp ms, input_length, output_length).")
    src.add_argument("--workload", type=str, metavar="NAME",
                     help=f"Built-in workload: one of {', '.join(workload_names())} "
                          "(mooncake-* read the shared traces).")
    p.add_argument("--num-requests", type=int, default=None,
                   help="With --workload: number of requests to draw (default: the workload's).")
    p.add_argument("--ranks", type=int, default=16, help="Number of DP-attention ranks (EP size).")
    p.add_argument("--profile", type=str, default=cost.DEFAULT_PROFILE,
                   help="Cost profile: a shipped name (sglang_dcp/profiles/NAME.json: "
                        f"{', '.join(available_profiles())}) or the path of a profile JSON.")
    p.add_argument("--ranks-per-node", type=int, default=8,
                   help="DP ranks per node: guest items between ranks of one node pay the "
                        "profile's intranode (NVLink) exchange rate, others the across-node one.")
    p.add_argument("--exchange-wire", choices=cost.EXCHANGE_WIRES, default=cost.DEFAULT_WIRE,
                   help="What a rank's exchange is charged for (and dcp predicts with): what "
                        "the server's exchange ships ('scoped', the default: each peer the "
                        "busiest pair's bucket each step, the peers being the rank's node "
                        "while no split request has a shard off its home's node, else every "
                        "rank), the same over every rank always ('bucketed', the server "
                        "before scopes) or its own guest items ('items', the profile's "
                        "per-item model).")
    p.add_argument("--exchange-scale", type=float, default=1.0, metavar="F",
                   help="A COUNTERFACTUAL, not a profile: charge (and let dcp predict) the "
                        "exchange's fixed and per-item costs times F (0: free), nothing else "
                        "changed, to see what a cheaper exchange would be worth (the output "
                        "says so). Default 1: the profile as shipped.")
    p.add_argument("--kv-capacity", type=int, default=None,
                   help="KV capacity per rank in tokens (default: the profile's).")
    p.add_argument("--slo-tpot-ms", type=float, default=50.0,
                   help="P99 TPOT SLO in milliseconds.")
    p.add_argument("--max-kv-wait-ms", type=float, default=2000.0,
                   help="P99 time a decode-ready request may wait for KV before the rate counts "
                        "as overloaded (the cluster no longer keeps up).")
    p.add_argument("--policies", type=str, default=DEFAULT_POLICIES,
                   help="Comma-separated placement policies to compare; planner options as "
                        "NAME:KEY=VALUE[:KEY=VALUE], e.g. dcp:home_rule=step.")
    p.add_argument("--out", type=str, required=True, metavar="DIR",
                   help="Output directory for summary.json, summary.md and PNG plots.")
    p.add_argument("--seed", type=int, default=0,
                   help="Seed of the synthetic workload (traces are replayed as recorded).")
    p.add_argument("--rate", type=float, default=None,
                   help="Skip the search: run every policy once at this rate (req/s).")
    p.add_argument("--search-precision", type=float, default=0.02,
                   help="Stop bisecting when hi/lo - 1 of the rate bracket is at most this.")
    p.add_argument("--max-runs", type=int, default=14,
                   help="Most simulator runs per policy in the goodput search.")
    p.add_argument("--rebalance-every-ms", type=float, default=1000.0,
                   help="Call the policy's rebalance() this often in simulated time (0: never).")
    p.add_argument("--rebalance-max-tokens", type=int, default=262144,
                   help="KV tokens one rebalance() may migrate.")
    p.add_argument("--migration", choices=("background", "stall"), default="background",
                   help="How rebalance() KV copies cost time: copied while decoding goes on "
                        "(tokens read on the source until the copy lands), or a stall of the "
                        "whole cluster.")
    p.add_argument("--queue-bypass-tokens", type=float, default=None,
                   help="A waiter is also passed until the requests admitted ahead of it hold "
                        "this many times its KV (not the server's; default off).")
    p.add_argument("--queue-max-bypass", type=int, default=16,
                   help="The DP controller's queue (dcp, uniform): a waiting request is passed "
                        "over at most this many times by later ones that fit (the server's "
                        "--dcp-queue-max-bypass; 0 = arrival order; -1 = unbounded first fit).")
    p.add_argument("--deployment", choices=DEPLOYMENTS, default="decode",
                   help="Where prefill runs and how KV reaches the decode ranks (sim/deploy.py): "
                        "decode (prefill elsewhere, KV appears free), colocated (prefill stalls "
                        "every rank; per-rank prefix caches), pd (KV transferred into each "
                        "holder), pd-home (transferred to the home, then shipped).")
    p.add_argument("--prefill-delay", choices=PREFILL_DELAYS, default="shift",
                   help="decode/pd/pd-home: a request's prefill (on a prefill cluster without a "
                        "queue) is added to its latency and it reaches the decode ranks at its "
                        "trace time (shift), or it reaches them that much later (replay: a finite "
                        "trace then reaches them diluted when prefills outlast its arrivals; the "
                        "results before 2026-12-07).")
    p.add_argument("--pd-gbps", type=float, default=None,
                   help="pd/pd-home: KV transfer GB/s into one decode rank (default 23.75: "
                        "Mooncake TE's published 190 GB/s over 8 x 400 Gbps NICs, per NIC).")
    p.add_argument("--tpot-stat", choices=("p99", "mean"), default="p99",
                   help="The TPOT the SLO bounds: P99 over requests, or the token-weighted mean "
                        "(for colocated, where one prefill stall breaks a short request's TPOT).")
    p.add_argument("--reuse", type=str, default=None, metavar="SUMMARY_JSON",
                   help="Copy the policies of this earlier summary that --policies does not list, "
                   "and its pooled bound, instead of running them (a change to one policy).")
    p.add_argument("--no-plots", action="store_true", help="Skip the PNG plots.")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    return p


def parse(argv=None) -> tuple[argparse.Namespace, object]:
    """Parse and validate; every failure is one line on stderr and exit code 2."""
    parser = make_parser()
    args = parser.parse_args(argv)
    policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    known = list(POLICIES)
    if not policies:
        parser.error(f"--policies is empty; choose from {', '.join(known)}")
    try:
        profile = load_profile(args.profile)
    except ValueError as e:
        parser.error(f"--profile: {e}")
    if args.ranks_per_node < 1:
        parser.error(f"--ranks-per-node must be >= 1, got {args.ranks_per_node}")
    if args.ranks < 1:
        parser.error(f"--ranks must be >= 1, got {args.ranks}")
    if args.kv_capacity is not None and args.kv_capacity < profile.page_size:
        parser.error(f"--kv-capacity must be at least one page ({profile.page_size} tokens for "
                     f"this --profile), got {args.kv_capacity}")
    # the run's own cluster: options that depend on it (uniform's group_size) are checked too
    probe_cluster = cost.cluster_for(profile, args.ranks, args.kv_capacity,
                                     ranks_per_node=args.ranks_per_node)
    for label in policies:
        try:
            name, options = parse_policy(label)
        except ValueError as e:
            parser.error(f"--policies: {e}")
        if name not in known:
            parser.error(f"--policies: unknown policy {name!r}; choose from {', '.join(known)}")
        try:  # let the planner validate the options now, not in the middle of a search
            make_policy(name, probe_cluster, profile, **split_sim_options(name, options)[0])
        except (TypeError, ValueError) as e:
            parser.error(f"--policies: {label!r}: {e}")
    args.policies = tuple(dict.fromkeys(policies))
    if not 0 <= args.exchange_scale < float("inf"):
        parser.error(f"--exchange-scale must be a number >= 0, got {args.exchange_scale}")
    args.reused = None
    if args.reuse:  # read once here: a bad file or a differently priced run is a usage error
        try:
            args.reused = json.loads(Path(args.reuse).read_text())
            scale = args.reused["cluster"].get("exchange_scale", 1.0)
            delay = args.reused["search"].get("prefill_delay", "replay")  # older: replayed
            wire = args.reused["cluster"].get("exchange_wire", "bucketed")  # older: bucketed
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            parser.error(f"--reuse {args.reuse}: not a readable sim summary.json ({e})")
        if scale != args.exchange_scale:
            parser.error(f"--reuse: that summary priced the exchange x{scale:g}, this run "
                         f"x{args.exchange_scale:g}; rerun every policy (drop --reuse)")
        if wire != args.exchange_wire:
            parser.error(f"--reuse: that summary charged the exchange's wire as {wire!r}, this "
                         f"run {args.exchange_wire!r}; rerun every policy (drop --reuse)")
        if delay != args.prefill_delay:
            parser.error(f"--reuse: that summary ran with --prefill-delay {delay}, this run "
                         f"{args.prefill_delay}; rerun every policy (drop --reuse)")
    for flag in ("slo_tpot_ms", "max_kv_wait_ms", "search_precision"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.pd_gbps is not None and not args.pd_gbps > 0:
        parser.error(f"--pd-gbps must be > 0, got {args.pd_gbps}")
    if args.rate is not None and not args.rate > 0:
        parser.error(f"--rate must be > 0, got {args.rate}")
    if args.queue_max_bypass < -1:
        parser.error(f"--queue-max-bypass must be >= -1, got {args.queue_max_bypass}")
    if args.max_runs < 1:
        parser.error(f"--max-runs must be >= 1, got {args.max_runs}")
    if args.num_requests is not None and args.num_requests < 1:
        parser.error(f"--num-requests must be >= 1, got {args.num_requests}")
    if args.trace is not None:
        if not os.path.isfile(args.trace):
            parser.error(f"--trace: no such file {args.trace!r}; pass a Mooncake JSONL trace or "
                         f"use --workload {{{','.join(workload_names())}}}")
        try:
            workload = load_trace(args.trace)
        except ValueError as e:
            parser.error(f"--trace: {e}")
        if args.num_requests is not None:
            workload = workload.head(args.num_requests)
    else:
        try:
            workload = make_workload(args.workload, seed=args.seed,
                                     num_requests=args.num_requests)
        except KeyError as e:
            parser.error(f"--workload: {e.args[0]} or pass --trace FILE")
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"--workload: {e}")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--out: cannot create directory {args.out!r} ({e.strerror}); pass a "
                     f"writable directory")
    return args, workload


def main(argv=None) -> int:
    args, workload = parse(argv)
    from sglang_dcp.sim import report
    from sglang_dcp.sim.engine import SimOptions
    from sglang_dcp.sim.experiment import Experiment, run_experiment
    from sglang_dcp.sim.search import SearchSpec

    search = SearchSpec(args.slo_tpot_ms, args.max_kv_wait_ms, args.search_precision,
                        args.max_runs, tpot_stat=args.tpot_stat)
    sim = SimOptions(deployment=args.deployment, pd_gbps=args.pd_gbps,
                     prefill_delay=args.prefill_delay,
                     rebalance_every_ms=args.rebalance_every_ms,
                     rebalance_max_tokens=args.rebalance_max_tokens, migration=args.migration,
                     queue_max_bypass=None if args.queue_max_bypass < 0 else args.queue_max_bypass,
                     queue_bypass_tokens=args.queue_bypass_tokens)
    exp = Experiment(workload, args.ranks, args.profile, args.policies, search, sim,
                     kv_capacity=args.kv_capacity, ranks_per_node=args.ranks_per_node,
                     exchange_wire=args.exchange_wire, exchange_scale=args.exchange_scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.rate is not None:
        summary, runs = run_fixed_rate(exp, args.rate)
    else:
        summary, runs = run_experiment(exp, progress=not args.quiet, reuse=args.reused)
    summary["timing"]["wall_s"] = time.perf_counter() - t0
    report.write_summary(out, summary)
    (out / "summary.md").write_text(report.markdown(summary))
    if not args.no_plots:
        report.write_plots(out, summary, runs)
    print(report.markdown(summary))
    print(f"wrote {out}/summary.json in {summary['timing']['wall_s']:.1f} s")
    return 0


def run_fixed_rate(exp, rate: float):
    """Every policy once at ``rate``; max_rate_rps is null (no search ran)."""
    from sglang_dcp.sim.environment import environment
    from sglang_dcp.sim.metrics import pct, policy_summary

    runs = {n: exp.run(n, rate, record=True) for n in exp.policies}
    summary = {
        "policies": {n: {"max_rate_rps": None, "goodput_rps": None, **policy_summary(r)}
                     for n, r in runs.items()},
        "reference": {"rate_rps": rate, "why": "--rate", "best_baseline_rate_rps": None},
        "ratios": {},
        "search": {"slo_tpot_ms": exp.search.slo_tpot_ms,
                   "max_kv_wait_ms": exp.search.max_kv_wait_ms,
                   "rel_precision": exp.search.rel_precision, "max_runs": 0, "precision": {},
                   "deployment": exp.sim.deployment, "prefill_delay": exp.sim.prefill_delay},
        "workload": {"name": exp.workload.name, "num_requests": len(exp.workload),
                     "native_rate_rps": exp.workload.rate_rps},
        "cluster": {"num_ranks": exp.num_ranks, "profile": exp.profile_name,
                    "kv_capacity_tokens_per_rank": exp.cluster.kv_capacity[0],
                    "page_size": exp.cluster.page_size},
        "details": {n: {"p99_kv_wait_ms": pct(r.queue_ms, 99), "reject_reasons": r.reject_reasons,
                        "num_steps_at_reference": r.num_steps, "deploy": r.deploy,
                        "run_wall_s": w}
                    for (n, r), w in zip(runs.items(), exp.run_wall_s)},
        "env": environment(),
        "timing": {"runs": len(exp.run_wall_s), "total_s": sum(exp.run_wall_s),
                   "max_run_s": max(exp.run_wall_s)},
    }
    return summary, runs


if __name__ == "__main__":
    sys.exit(main())
