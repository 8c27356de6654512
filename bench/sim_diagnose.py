"""What holds ``dcp`` back in one scenario: which rule binds at a given rate.

Replays one scenario (the ``python -m sglang_dcp.sim`` workload flags) through a policy at one
or more rates and through the pooled bound, and prints, per run:

- pass/fail of each SLO rule (P99 TPOT, P99 wait for KV) and the goodput verdict;
- why requests waited: each waiting request is charged to the reason of its last retryable
  refusal (``kv``: no room, ``budget``: the step budget, ``queue``: never tried, it queued
  behind a starving head), with how many waited > 100 ms and the P99 wait of each group;
- where the step time goes, time-weighted over the loaded window: the mean step, and what a
  pooled (perfectly balanced, exchange-free) step would cost at the same loads, split into
  rank imbalance (slowest rank minus the mean rank), MoE barrier imbalance (``moe_us`` of the
  largest batch minus of the mean batch), the exchange's rows (bucketed: every rank's padded
  rows, as the simulator charges them; per item otherwise) and merge, and the fixed exchange
  (2 all-to-alls per layer whenever any guest exists);
- for step-budget refusals: the predicted step that refused (reserved KV) against the step the
  cluster then ran (written KV): how conservative the gate was.

    python bench/sim_diagnose.py --workload agentic-codex --ranks 8 --profile qwen3-235b-h200 \
        --slo-tpot-ms 35 --num-requests 1500 --rates 0.8,0.9
    python bench/sim_diagnose.py ... --policy dcp:step_gate=split      # a variant
    python bench/sim_diagnose.py ... --summary bench/results/sim-matrix/ID  # -> ID/why.json

Pure Python + numpy (the simulator); nothing is written except ``why.json`` with ``--summary``
(``bench/sim.py`` runs that for every long-context scenario; ``sim.md`` tabulates it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sglang_dcp.planner.wire_cost import DEFAULT_WIRE, bucketed_exchange_us  # noqa: E402
from sglang_dcp.sim.engine import SimOptions, simulate  # noqa: E402
from sglang_dcp.sim.experiment import Experiment  # noqa: E402
from sglang_dcp.sim.metrics import pct  # noqa: E402
from sglang_dcp.sim.search import SearchSpec, find_max_rate  # noqa: E402
from sglang_dcp.sim.workload import make_workload  # noqa: E402
from sglang_dcp.types import Rejection  # noqa: E402


ABOVE = 1.05  # --summary: measure at this multiple of the policy's max rate (where it fails)


def reason_kind(reason: str) -> str:
    return "budget" if "step budget" in reason else "kv"


class Probe:
    """Wraps a policy: counts refusals by kind and integrates step-time components between
    the engine's ``on_time`` calls (the state seen there held since the previous call)."""

    def __init__(self, policy, profile, window_end_ms: float, wire=None) -> None:
        self._p, self.profile, self.window_end = policy, profile, window_end_ms
        self._wire = wire  # (busiest pair, crosses nodes) -> every rank's wire (µs); None: per item
        self.last_reason: dict[str, str] = {}
        self.refusals = {"kv": 0, "budget": 0}
        self.budget_pred: list[float] = []  # predicted step (µs) of each budget refusal
        self.budget_now: list[float] = []  # the step then running (written KV)
        self._t = None
        self.acc = {k: 0.0 for k in ("time", "step", "pooled", "rank_imb", "moe_imb",
                                     "item_ex", "fixed", "guest_time")}

    def __getattr__(self, name):
        return getattr(self._p, name)

    def admit(self, req, home_rank=None):
        got = self._p.admit(req, home_rank)
        if isinstance(got, Rejection) and got.retryable:
            k = reason_kind(got.reason)
            self.refusals[k] += 1
            self.last_reason[req.rid] = k
            if k == "budget":
                self.budget_pred.append(float(got.reason.split(" ms step")[0].split()[-1]))
                self.budget_now.append(self._now_step_us()[0] / 1e3)
        return got

    def _now_step_us(self):
        p, pol = self.profile, self._p
        kv, b, gi, go = pol.kv_used(), pol.batch_sizes(), pol.guest_items(), pol.guest_out()
        nr = pol.guest_near()
        if self._wire is not None:  # as sim.cost.StepModel charges it
            w = self._wire(pol.busiest_pair(), pol.cross_pairs())
            ranks = [p.rank_time_us(kv[r], b[r] + gi[r], b[r]) + p.merge_us(go[r]) + w
                     for r in range(len(kv))]
        else:
            ranks = [p.rank_time_us(kv[r], b[r] + gi[r], b[r], gi[r], go[r], nr[r])
                     for r in range(len(kv))]
        fixed = p.exchange_us_fixed if any(gi) else 0.0
        return max(ranks) + p.moe_us(max(b)) + fixed, ranks, fixed

    def on_time(self, now_ms: float, step: int) -> None:
        if self._t is not None and now_ms > self._t and self._t < self.window_end:
            dt = min(now_ms, self.window_end) - self._t
            p, pol = self.profile, self._p
            step_us, ranks, fixed = self._now_step_us()
            b, gi, go = pol.batch_sizes(), pol.guest_items(), pol.guest_out()
            n = len(b)
            mean_b = sum(b) / n
            item_ex = max(p.exchange_us(gi[r], go[r]) + p.merge_us(go[r]) for r in range(n)) \
                if self._wire is None else (self._wire(pol.busiest_pair(), pol.cross_pairs())
                                            + max(map(p.merge_us, go)))
            pooled = (p.rank_time_us(sum(pol.kv_used()) / n, mean_b, mean_b)
                      + p.moe_us(mean_b))
            a = self.acc
            a["time"] += dt
            a["step"] += dt * step_us
            a["pooled"] += dt * pooled
            a["rank_imb"] += dt * (max(ranks) - sum(ranks) / n)
            a["moe_imb"] += dt * (p.moe_us(max(b)) - p.moe_us(mean_b))
            a["item_ex"] += dt * item_ex
            a["fixed"] += dt * fixed
            a["guest_time"] += dt * (fixed > 0)
        self._t = now_ms
        self._p.on_time(now_ms, step)


def measure(exp: Experiment, label: str, rate: float) -> dict:
    """One replay of ``label`` (a policy label, or ``"pooled"``) at ``rate``: the SLO rules'
    verdicts and, for a policy, what held requests back (see the module docstring)."""
    slo = exp.search.slo_tpot_ms
    w = exp.workload.at_rate(rate)
    probe = None
    if label == "pooled":
        run = exp.run_pooled(rate)
    else:
        from sglang_dcp.planner import make_policy
        from sglang_dcp.sim.experiment import parse_policy

        name, opts = parse_policy(label)
        if name == "dcp":  # as Experiment.run: the SLO is its step budget
            opts = {"step_slo_ms": slo, "split_rule": "auto", "exchange_wire": exp.exchange_wire,
                    **opts}
        pol = make_policy(name, exp.cluster, exp.profile, **{**exp.policy_options, **opts})
        wire = None if exp.exchange_wire == "items" else (
            lambda b, c: bucketed_exchange_us(exp.profile, exp.num_ranks, b,
                                              ranks_per_node=exp.ranks_per_node,
                                              cross=c or exp.exchange_wire == "bucketed"))
        probe = Probe(pol, exp.profile, float(w.arrival_ms.max()), wire)
        run = simulate(w, probe, exp.model, exp.num_ranks, kv_capacity=exp.cluster.kv_capacity,
                       options=exp._options(False, False))
    p99t, p99w = pct(run.tpot_ms, 99), pct(run.queue_ms, 99)
    out = {"policy": label, "rate_rps": rate, "p99_tpot_ms": p99t, "p99_kv_wait_ms": p99w,
           "tpot_ok": bool(p99t <= slo), "wait_ok": bool(p99w <= exp.search.max_kv_wait_ms),
           "rejected": run.rejected, "mean_step_ms": run.busy_ms / max(run.num_steps, 1)}
    if probe is None:
        return out
    wait = run.first_step_ms - run.ready_ms
    groups: dict[str, list[float]] = {"kv": [], "budget": [], "queue": []}
    for i, wt in enumerate(wait):
        if not np.isnan(wt) and wt > 1.0:
            groups[probe.last_reason.get(str(i), "queue")].append(float(wt))
    out["waits"] = {k: {"n": len(v), "over_100ms": sum(x > 100 for x in v),
                        "over_2s": sum(x > 2000 for x in v),
                        "p99_ms": pct(np.array(v), 99) if v else 0.0}
                    for k, v in groups.items()}
    out["refusals"] = dict(probe.refusals)
    a, T = probe.acc, probe.acc["time"]
    if T:
        out["step_ms"] = {k: a[k] / T / 1e3 for k in ("step", "pooled", "rank_imb", "moe_imb",
                                                      "fixed", "item_ex")}
        out["guests_live"] = a["guest_time"] / T
    if probe.budget_pred:
        out["budget_refusal"] = {"predicted_ms": float(np.median(probe.budget_pred)),
                                 "running_ms": float(np.median(probe.budget_now))}
    return out


def binding(m: dict) -> str:
    """Which rule binds, in words, from ``measure``'s numbers."""
    if m["tpot_ok"] and m["wait_ok"]:
        return "passes"
    if not m["wait_ok"]:
        w = m.get("waits", {})
        kind = max(w, key=lambda k: w[k]["over_2s"]) if w else "?"
        return {"budget": "step budget (waits)", "kv": "KV (waits)",
                "queue": "queueing behind a waiting request"}.get(kind, kind)
    return "TPOT"


def report(exp: Experiment, label: str, rate: float) -> dict:
    m = measure(exp, label, rate)
    print(f"  {label:>10} @ {rate:.4g} req/s: P99 TPOT {m['p99_tpot_ms']:6.1f} ms "
          f"{'ok ' if m['tpot_ok'] else 'BAD'} | P99 KV wait {m['p99_kv_wait_ms']:7.0f} ms "
          f"{'ok ' if m['wait_ok'] else 'BAD'} | rejected {m['rejected']} | mean step "
          f"{m['mean_step_ms']:.1f} ms")
    if "waits" not in m:
        return m
    parts = [f"{k}: {v['n']} waited ({v['over_100ms']} > 100 ms, {v['over_2s']} > 2 s, "
             f"P99 {v['p99_ms']:.0f} ms)" for k, v in m["waits"].items() if v["n"]]
    print(f"             waits by last refusal: {'; '.join(parts) or 'none'} | refusals kv "
          f"{m['refusals']['kv']}, budget {m['refusals']['budget']} | binds: {binding(m)}")
    if "step_ms" in m:
        s = m["step_ms"]
        print(f"             loaded window, time-weighted (ms): step {s['step']:.2f} = pooled "
              f"{s['pooled']:.2f} + rank imbalance {s['rank_imb']:.2f} + MoE imbalance "
              f"{s['moe_imb']:.2f} + fixed exchange {s['fixed']:.2f} (guests live "
              f"{m['guests_live']:.0%} of the time); per-item exchange+merge on the worst rank "
              f"{s['item_ex']:.2f}")
    if "budget_refusal" in m:
        b = m["budget_refusal"]
        print(f"             budget refusals: predicted step median {b['predicted_ms']:.1f} ms; "
              f"step then running median {b['running_ms']:.1f} ms")
    return m


# --summary: the exchange priced otherwise, nothing else changed (attribution): key ->
# (exchange cost scale, exchange wire); "items": the wire ships only the items (per-peer sizes,
# no bucket padding: the issue-23 target), "0": free, "0.5": half price
COUNTERFACTUALS = {"0": (0.0, DEFAULT_WIRE), "0.5": (0.5, DEFAULT_WIRE), "items": (1.0, "items")}


def counterfactuals(args, w, summary: dict, spec: SearchSpec) -> dict:
    """``--summary``: the policy's max rate, searched as the matrix searched it (same spec, same
    start), with the exchange priced as in ``COUNTERFACTUALS`` (its fixed and per-item costs
    scaled, or the wire charged per item instead of padded buckets), nothing else changed: how
    much of the gap the exchange's price explains. Not a claim about any hardware
    (``sim.cost.scaled_exchange``)."""
    cfg = summary.get("search", {})
    spec = SearchSpec(spec.slo_tpot_ms, spec.max_kv_wait_ms, cfg.get("rel_precision", 0.02),
                      cfg.get("max_runs", spec.max_runs), tpot_stat=cfg.get("tpot_stat", "p99"))
    out = {}
    for key, (scale, wire) in COUNTERFACTUALS.items():
        cf = Experiment(w, args.ranks, args.profile, (args.policy,), spec, SimOptions(),
                        kv_capacity=args.kv_capacity, exchange_scale=scale, exchange_wire=wire)
        res = find_max_rate(lambda r: cf.run(args.policy, r, early_stop=True), w.rate_rps, spec)
        out[key] = res.max_rate_rps
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--ranks", type=int, required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--slo-tpot-ms", type=float, required=True)
    ap.add_argument("--num-requests", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kv-capacity", type=int, default=None)
    ap.add_argument("--policy", default="dcp")
    ap.add_argument("--rates", default="", help="Comma-separated rates; default: the policy's "
                    "and the pooled bound's max rates, searched here.")
    ap.add_argument("--summary", default="", metavar="DIR",
                    help="Read the policy's max rate from DIR/summary.json (a bench/sim.py "
                    "scenario), measure just above it (x1.05) and write DIR/why.json.")
    args = ap.parse_args()
    w = make_workload(args.workload, seed=args.seed, num_requests=args.num_requests)
    spec = SearchSpec(slo_tpot_ms=args.slo_tpot_ms, max_kv_wait_ms=2000.0, max_runs=14)
    exp = Experiment(w, args.ranks, args.profile, (args.policy,), spec, SimOptions(),
                     kv_capacity=args.kv_capacity)
    if args.summary:
        folder = Path(args.summary)
        s = json.loads((folder / "summary.json").read_text())
        top = s["policies"][args.policy]["max_rate_rps"]
        rate = (top or s["reference"]["rate_rps"]) * ABOVE
        why = {"rate_rps": rate, "above_max_rate": ABOVE, "policy": measure(exp, args.policy, rate),
               "pooled": measure(exp, "pooled", rate)}
        why["binds"] = binding(why["policy"])
        why["exchange_scaled"] = counterfactuals(args, w, s, exp.search)
        (folder / "why.json").write_text(json.dumps(why, indent=2) + "\n")
        return 0
    if args.rates:
        rates = [float(x) for x in args.rates.split(",")]
    else:
        mine = find_max_rate(lambda r: exp.run(args.policy, r, early_stop=True), w.rate_rps,
                             spec).max_rate_rps
        pooled = find_max_rate(lambda r: exp.run_pooled(r, early_stop=True), w.rate_rps,
                               spec).max_rate_rps
        print(f"max rate: {args.policy} {mine:.4g}, pooled {pooled:.4g} req/s")
        rates = [mine, pooled]
    for r in rates:
        print(f"rate {r:.4g} req/s")
        report(exp, args.policy, r)
        report(exp, "pooled", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
