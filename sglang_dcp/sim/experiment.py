"""One experiment: a workload, a cluster and a profile; a goodput search per policy; then every
policy replayed at one common reference rate (the best baseline's max rate) so TPOT, latency and
imbalance are compared at the same load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.sim import cost
from sglang_dcp.sim.bound import PooledStepModel, fluid_max_rate
from sglang_dcp.sim.engine import SimOptions, simulate
from sglang_dcp.sim.environment import environment
from sglang_dcp.sim.metrics import RunResult, pct, policy_summary
from sglang_dcp.sim.search import SearchResult, SearchSpec, abort_after, find_max_rate
from sglang_dcp.sim.workload import Workload

BASELINES = ("round_robin", "total_tokens", "total_tokens_sglang")  # SGLang's own dispatch
SIM_POLICY_OPTIONS = ("prefix_cache", "cache_layout")  # policy-label options the loop takes


def split_sim_options(name: str, options: dict) -> tuple[dict, dict]:
    """(planner options, SimOptions overrides) of a policy label: ``prefix_cache`` (0: no
    prefix caches) and ``cache_layout`` (place turns on their cached layout; on for ``dcp``, off
    for the others: SGLang's DP controller routes blind to its caches) go to the loop."""
    sim = {"cache_layout": name == "dcp"}
    sim.update({k: bool(options[k]) for k in SIM_POLICY_OPTIONS if k in options})
    return {k: v for k, v in options.items() if k not in SIM_POLICY_OPTIONS}, sim


@dataclass
class Experiment:
    workload: Workload
    num_ranks: int
    profile_name: str
    policies: tuple[str, ...]
    search: SearchSpec
    sim: SimOptions = SimOptions()
    policy_options: dict = field(default_factory=dict)
    kv_capacity: int | None = None  # tokens per rank; None: the profile's
    ranks_per_node: int = 8
    exchange_wire: str = cost.DEFAULT_WIRE  # what the exchange is charged for (EXCHANGE_WIRES)
    exchange_scale: float = 1.0  # != 1: a counterfactual (cost.scaled_exchange), what-if only

    def __post_init__(self) -> None:
        self.profile = cost.scaled_exchange(load_profile(self.profile_name), self.exchange_scale)
        self.cluster = cost.cluster_for(self.profile, self.num_ranks, self.kv_capacity,
                                        self.ranks_per_node)
        self.model = cost.StepModel(self.profile, self.num_ranks,
                                    kv_capacity=max(self.cluster.kv_capacity),
                                    exchange_wire=self.exchange_wire,
                                    ranks_per_node=self.ranks_per_node)  # fmt: skip
        self.run_wall_s: list[float] = []

    def run_pooled(self, rate_rps: float, early_stop: bool = False) -> RunResult:
        """The whole cluster as one pooled rank (perfect packing, perfect balance, no exchange
        cost; ``bound.PooledStepModel``) under the same arrivals, queue and SLO rules."""
        cl = ClusterSpec.uniform(1, sum(self.cluster.kv_capacity), self.cluster.page_size)
        pol = make_policy("dcp", cl, self.profile, max_degree=1)
        opts = self._options(False, early_stop)
        run = simulate(self.workload.at_rate(rate_rps), pol,
                       PooledStepModel(self.profile, self.num_ranks), 1,
                       kv_capacity=cl.kv_capacity, options=opts)
        run.policy = "pooled"
        return run

    def _options(self, record: bool, early_stop: bool) -> SimOptions:
        opts = {**self.sim.__dict__, "record": record}
        if early_stop:
            w = self.workload
            opts.update(abort_wait_ms=self.search.max_kv_wait_ms,
                        abort_wait_count=abort_after(len(w)),
                        abort_tpot_ms=self.search.slo_tpot_ms,
                        abort_tpot_count=abort_after(int((w.output_len > 1).sum())))
        return SimOptions(**opts)

    def run(self, policy: str, rate_rps: float, record: bool = False,
            early_stop: bool = False) -> RunResult:
        """Replay the workload at ``rate_rps`` through a fresh ``policy``. ``early_stop``: stop
        once the SLO is certainly broken (for the search); ``record``: keep plot series."""
        t0 = time.perf_counter()
        name, options = parse_policy(policy)
        options, sim_extra = split_sim_options(name, options)
        if name == "dcp":  # as an operator runs it: the TPOT SLO is its step budget
            options = {"step_slo_ms": self.search.slo_tpot_ms, "split_rule": "auto",
                       "exchange_wire": self.exchange_wire, **options}  # predicts what is charged
        pol = make_policy(name, self.cluster, self.profile,
                          **{**self.policy_options, **options})
        opts = SimOptions(**{**self._options(record, early_stop).__dict__, **sim_extra})
        run = simulate(self.workload.at_rate(rate_rps), pol, self.model, self.num_ranks,
                       kv_capacity=self.cluster.kv_capacity, options=opts)
        run.policy = policy
        self.run_wall_s.append(time.perf_counter() - t0)
        return run


def parse_policy(label: str) -> tuple[str, dict]:
    """``"dcp:home_rule=step:max_degree=1"`` -> ``("dcp", {"home_rule": "step", ...})``.

    Values are read as int, then float, else kept as strings; ``none`` is ``None`` (the
    default; for ``dcp:step_slo_ms=none``: no step budget). The label names the variant in
    every output.
    """
    name, *pairs = label.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"policy {label!r}: option {pair!r} is not KEY=VALUE")
        if value.lower() == "none":  # the option's default / off
            options[key] = None
            continue
        for kind in (int, float, str):
            try:
                options[key] = kind(value)
                break
            except ValueError:
                continue
    return name, options


def run_experiment(exp: Experiment, progress: bool = False, pooled_bound: bool = True,
                   reuse: dict | None = None) -> tuple[dict, dict[str, RunResult]]:
    """Search every policy, replay all at the reference rate. Returns (summary, runs at ref).

    ``reuse``: an earlier ``summary.json`` of the same scenario. Its policies that
    ``exp.policies`` does not list, and its pooled bound, are copied as they are (searched and
    replayed by that run; ``summary["reused"]`` says which, and from which commit) and join the
    reference rate and the ratios; only ``exp.policies`` run. For a change that touches one
    policy's code alone."""
    from tqdm import tqdm

    bar = tqdm(total=len(exp.policies) * exp.search.max_runs, disable=None if progress else True,
               unit="run", desc="goodput search", leave=False)

    def run_at(name):
        def f(rate):
            bar.set_postfix_str(f"{name} @ {rate:.3f} req/s")
            r = exp.run(name, rate, early_stop=True)
            bar.update()
            return r
        return f

    searches = {}
    for name in exp.policies:
        searches[name] = find_max_rate(run_at(name), exp.workload.rate_rps, exp.search)
    old = {n: p for n, p in (reuse or {}).get("policies", {}).items() if n not in exp.policies}
    old_pooled = (reuse or {}).get("pooled_bound")
    if old_pooled and pooled_bound:
        pooled = SearchResult(old_pooled["rate_rps"], old_pooled["precision"],
                              old_pooled.get("trials", []))
    else:
        pooled = find_max_rate(lambda r: exp.run_pooled(r, early_stop=True),
                               exp.workload.rate_rps, exp.search) if pooled_bound else None
    bar.close()

    base = {n: searches[n].max_rate_rps for n in exp.policies if n in BASELINES}
    base.update({n: p["max_rate_rps"] for n, p in old.items() if n in BASELINES})
    if base and max(base.values()) > 0:
        ref_rate = max(base.values())
        why = f"best baseline max rate ({max(base, key=base.get)})"
    else:
        passing = [s.max_rate_rps for s in searches.values() if s.max_rate_rps > 0] + [
            p["max_rate_rps"] for p in old.values() if p["max_rate_rps"] > 0]
        ref_rate = min(passing) if passing else exp.workload.rate_rps
        why = "lowest max rate among policies (no baseline in the list)" if passing else \
            "native rate (no policy met the SLO)"

    runs = {}
    for name in tqdm(exp.policies, desc="reference runs", leave=False,
                     disable=None if progress else True):
        runs[name] = exp.run(name, ref_rate, record=True)

    policies, details = {}, {}
    n_req = len(exp.workload)
    for name in exp.policies:
        run = runs[name]
        served = 1.0 - run.rejected / n_req if n_req else 1.0
        policies[name] = {"max_rate_rps": searches[name].max_rate_rps,
                          "goodput_rps": searches[name].max_rate_rps * served,
                          **policy_summary(run)}
        details[name] = {
            "p99_kv_wait_ms": pct(run.queue_ms, 99),
            "kv_imbalance_run": run.kv_imbalance_run,
            "batch_imbalance_run": run.batch_imbalance_run,
            "mean_step_ms": run.busy_ms / run.num_steps if run.num_steps else None,
            "migrated_tokens": run.migrated_tokens,
            "migration_stall_ms": run.migration_stall_ms,
            "deploy": run.deploy,
            "reject_reasons": run.reject_reasons,
            "num_steps_at_reference": run.num_steps,
            "search_trials": searches[name].trials,
        }
    for name, p in old.items():  # reused as they were
        policies[name] = p
        details[name] = reuse["details"][name]
    best_base = max(base.values()) if base else None
    fluid = fluid_max_rate(exp.workload, exp.profile, exp.num_ranks,
                           slo_ms=exp.search.slo_tpot_ms, kv_capacity=exp.cluster.kv_capacity[0])
    summary = {
        "policies": policies,
        "reference": {"rate_rps": ref_rate, "why": why, "best_baseline_rate_rps": best_base},
        "ratios": _ratios(policies, fluid["rate_rps"],
                          pooled.max_rate_rps if pooled else None),
        "search": {
            "slo_tpot_ms": exp.search.slo_tpot_ms,
            "tpot_stat": exp.search.tpot_stat,
            "deployment": exp.sim.deployment,
            "prefill_delay": exp.sim.prefill_delay,
            "max_kv_wait_ms": exp.search.max_kv_wait_ms,
            "rel_precision": exp.search.rel_precision,
            "max_runs": exp.search.max_runs,
            "precision": {**{n: reuse["search"]["precision"][n] for n in old},
                          **{n: s.precision for n, s in searches.items()}},
        },
        "workload": {
            "name": exp.workload.name,
            "num_requests": len(exp.workload),
            "native_rate_rps": exp.workload.rate_rps,
            **{k: v for k, v in exp.workload.meta.items() if k in ("source", "seed")},
        },
        "cluster": {
            "num_ranks": exp.num_ranks,
            "profile": exp.profile_name,
            "kv_capacity_tokens_per_rank": exp.cluster.kv_capacity[0],
            "page_size": exp.cluster.page_size,
            "ranks_per_node": exp.cluster.ranks_per_node,
            "exchange_wire": exp.exchange_wire,
            **({"exchange_scale": exp.exchange_scale} if exp.exchange_scale != 1.0 else {}),
        },
        "fluid_bound": fluid,
        "pooled_bound": None if pooled is None else {
            "rate_rps": pooled.max_rate_rps, "precision": pooled.precision,
            "trials": pooled.trials},
        "details": details,
        "env": environment(),
        **({"reused": {"policies": sorted(old), "pooled_bound": bool(old_pooled),
                       "commit": reuse.get("env", {}).get("commit"),
                       "date": reuse.get("env", {}).get("date")}} if reuse else {}),
        "timing": {"runs": len(exp.run_wall_s), "total_s": sum(exp.run_wall_s),
                   "max_run_s": max(exp.run_wall_s, default=0.0)},
    }
    return summary, runs


def _ratios(policies: dict, fluid_rps: float | None, pooled_rps: float | None) -> dict:
    """Goodput ratios. Goodput = max arrival rate within the SLO x the share of requests served
    (a policy that rejects requests it cannot place does not get credit for them).

    ``dcp_vs_best_baseline``: against the best of SGLang's dispatchers (``BASELINES``);
    ``dcp_vs``: against every other policy; ``headroom_captured_{fluid,pooled}``:
    ``(dcp - best) / (bound - best)`` for the two bounds (``bound.py``)."""
    out: dict = {}
    if "dcp" not in policies:
        return out
    g = {n: p["goodput_rps"] for n, p in policies.items()}
    d = g["dcp"]
    out["dcp_vs"] = {n: (d / v if v else None) for n, v in g.items() if n != "dcp"}
    base = {n: v for n, v in g.items() if n in BASELINES}
    if base and max(base.values()) > 0:
        b = max(base, key=base.get)
        best = base[b]
        out["best_baseline"] = b
        out["dcp_goodput_vs_best_baseline"] = d / best
        if policies["dcp"]["p99_tpot_ms"]:
            out["baseline_p99_tpot_over_dcp"] = (policies[b]["p99_tpot_ms"]
                                                 / policies["dcp"]["p99_tpot_ms"])
        for key, bound in (("fluid", fluid_rps), ("pooled", pooled_rps)):
            if bound is not None:
                out[f"{key}_vs_best_baseline"] = bound / best
                out[f"headroom_captured_{key}"] = ((d - best) / (bound - best)
                                                   if bound > best else None)
    if g.get("uniform"):
        out["dcp_goodput_vs_uniform"] = d / g["uniform"]
    return out
