"""``why.json`` rows for ``sim.md``: what binds just above ``dcp``'s max rate.

``bench/sim_diagnose.py --summary`` writes ``why.json`` per long-context scenario (``bench/sim.py``
runs it); this turns them into the report's table. Every number is read from those files.
"""

from __future__ import annotations

import json
import statistics


def _f(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _why(scen) -> dict | None:
    """``why.json`` (``bench/sim_diagnose.py --summary``): what binds just above dcp's max."""
    f = scen.out / "why.json"
    return json.loads(f.read_text()) if f.is_file() else None


def exchange_goodput(r: dict) -> dict[str, float]:
    """``dcp``'s goodput (req/s) with the exchange priced as in ``why.json``'s
    ``exchange_scaled`` (``bench/sim_diagnose.COUNTERFACTUALS``: costs x0 / x0.5, or the wire
    per item without bucket padding; nothing else changed), by key: the searched rate times the
    share ``dcp`` served in the matrix run."""
    cf = (r.get("why") or {}).get("exchange_scaled")
    if not cf:
        return {}
    dcp = r["goodput"].get("dcp") or 0.0
    mx = (r.get("max_rate") or {}).get("dcp") or 0.0
    served = dcp / mx if mx else 1.0
    return {k: v * served for k, v in cf.items() if v is not None}


def exchange_captured(r: dict) -> dict[str, float]:
    """The pooled headroom ``dcp`` would capture with the exchange priced as in
    ``exchange_goodput``, by key."""
    b, pooled = r["best_baseline_goodput"], r.get("pooled")
    if not b or not pooled or pooled <= b:
        return {}
    return {k: (g - b) / (pooled - b) for k, g in exchange_goodput(r).items()}


# policies whose own step pays the DCP exchange: a counterfactual that prices only dcp's
# exchange otherwise says nothing about dcp against them
EXCHANGE_PAYERS = ("uniform",)


def invariant_price_row(rows: list[dict], within: float) -> list[str]:
    """The measured reason where ``dcp`` is below another policy by more than 2%: with the
    exchange priced otherwise (``why.json``, nothing else changed), would ``dcp`` be within 2%
    of it? Only against policies that do not pay the exchange themselves; the others named."""
    parts, payers = [], []
    for r in rows:
        cf = exchange_goodput(r)
        for n, v in r["dcp_vs"].items():
            if v is None or v >= within:
                continue
            if n in EXCHANGE_PAYERS:
                payers.append(f"{r['id']} vs {n} {v:.2f}x")
                continue
            g = r["goodput"].get(n) or 0.0
            if not g or "0" not in cf:
                parts.append(f"{r['id']} vs {n}: no counterfactual run")
                continue
            got = ", ".join(f"{name} {cf[k] / g:.2f}x" for k, name in
                            (("0", "free"), ("items", "per item"), ("0.5", "half price"))
                            if k in cf)
            parts.append(f"{r['id']} vs {n} {v:.2f}x -> {got}")
    if not parts and not payers:
        return []
    text = "; ".join(parts)
    if payers:
        text += ("; " if text else "") + "not a price question (the other policy pays the " \
            "same exchange): " + ", ".join(payers)
    return ["| below another policy by > 2%: would the exchange's price explain it? (`dcp` "
            "searched with its exchange priced otherwise, the other policy as run: a "
            f"counterfactual) | {text} | measured reason |"]


def _why_rows(rows: list[dict]) -> list[str]:
    """Per long-context scenario: which rule fails just above dcp's max rate, and where dcp's
    step goes against a pooled step at the same loads (bench/sim_diagnose.py)."""
    have = [r for r in rows if r.get("why")]
    if not have:
        return []
    L = ["## What binds just above `dcp`'s max rate (x1.05; `bench/sim_diagnose.py`)", "",
         "Requests that waited > 2 s, each charged to its last refusal (`budget`: the step "
         "budget, `kv`: no room, `queue`: queued behind a starving head); `dcp`'s time-weighted "
         "step in the loaded window = a pooled step at the same loads + rank imbalance + MoE "
         "barrier imbalance + fixed exchange (share of time any guest lives) + the exchange's "
         "rows and merges (the bucketed wire every rank ships, time-weighted, plus the worst "
         "rank's merges; rank imbalance already holds the per-rank part of it) + the rest "
         "(the mean rank over a pooled rank: the items' attention, exact split shares); the "
         "pooled bound's own mean step and P99 TPOT at the same rate; the headroom `dcp` "
         "would capture with the exchange priced otherwise, nothing else changed, searched as "
         "the matrix searches (COUNTERFACTUALS, for attribution, not a claim about any "
         "hardware): free (its fixed and per-item costs x0), its wire per item (per-peer sizes, "
         "no bucket padding: what the issue-23 target needs) and at half price (x0.5).", "",
         "| scenario | headroom (pooled) | binds | waits > 2 s (budget / kv / queue) | dcp step "
         "ms = pooled-at-load + rank imb. + MoE imb. + fixed exch. (guests live) + exch. rows "
         "+ rest | pooled at "
         "this rate: mean step / P99 TPOT ms | captured if the exchange were free / per item / "
         "half price | why below 60% "
         "(computed from these columns) |",
         "|---|---|---|---|---|---|---|---|"]
    for r in have:
        w, cf = r["why"], exchange_captured(r)
        m, pool = w["policy"], w["pooled"]
        waits = m.get("waits", {})
        wcell = " / ".join(str(waits.get(k, {}).get("over_2s", 0)) for k in ("budget", "kv",
                                                                               "queue"))
        st = m.get("step_ms")
        rows = st.get("item_ex", 0.0) if st else 0.0
        rest = st and st["step"] - st["pooled"] - st["rank_imb"] - st["moe_imb"] - st[
            "fixed"] - rows
        scell = "-" if not st else (
            f"{st['step']:.1f} = {st['pooled']:.1f} + {st['rank_imb']:.1f} + "
            f"{st['moe_imb']:.1f} + {st['fixed']:.1f} ({m.get('guests_live', 0):.0%}) + "
            f"{rows:.1f} + {rest:.1f}")
        L.append(f"| {r['id']} | {_f(r['captured_pooled'], 2)} | {w['binds']} "
                 f"(P99 TPOT {m['p99_tpot_ms']:.1f}, P99 wait {m['p99_kv_wait_ms']:.0f} ms) | "
                 f"{wcell} | {scell} | {pool['mean_step_ms']:.1f} / {pool['p99_tpot_ms']:.1f} | "
                 f"{_f(cf.get('0'))} / {_f(cf.get('items'))} / {_f(cf.get('0.5'))} | {reason(r)} |")
    return L + [""]


WAIT_RULE = {"budget": "step-budget waits", "kv": "KV waits", "queue": "queueing behind a "
             "waiting request"}


def reason(r: dict) -> str:
    """Why ``dcp`` captures < 60% of the pooled headroom, from the row's measured numbers: the
    rule that fails just above its max rate (the wait kind with most > 2 s waits), then the two
    largest parts of its mean step over the pooled bound's at the same rate (``load``: the
    pooled step at dcp's live loads over the pooled run's own, i.e. more requests live)."""
    cap, b = r.get("captured_pooled"), r["best_baseline_goodput"]
    if cap is None:
        if not b:
            return "no baseline meets the SLO at any rate: no headroom to measure"
        if not r.get("pooled"):
            return "-"
        rej = max((v or 0) for n, v in r["rejected"].items() if n in ("round_robin",
                                                                      "total_tokens"))
        extra = (f"; the baselines reject {rej} of {r['num_requests']} requests (larger than "
                 "a rank), which dcp serves") if rej else ""
        return f"no headroom: pooled bound {r['pooled'] / b:.2f}x the best baseline{extra}"
    if cap >= 0.6:
        return "met"
    m, pool = r["why"]["policy"], r["why"]["pooled"]
    waits = {k: v.get("over_2s", 0) for k, v in m.get("waits", {}).items()}
    rule = ("P99 TPOT" if not m.get("tpot_ok", True) else "") or (
        WAIT_RULE.get(max(waits, key=waits.get), "?") if waits and max(waits.values()) else
        "P99 KV wait")
    st = m.get("step_ms")
    if not st:
        return rule
    parts = {"load": st["pooled"] - pool["mean_step_ms"], "rank imbalance": st["rank_imb"],
             "MoE imbalance": st["moe_imb"], "exchange": st["fixed"] + st.get("item_ex", 0.0)}
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
    live = f" (guests live {m.get('guests_live', 0):.0%})"
    cf = exchange_captured(r)
    price = ""
    if cf.get("0") is not None:
        more = [f"{n} {cf[k]:.2f}" for k, n in (("items", "per item"), ("0.5", "half price"))
                if cf.get(k) is not None]
        price = (f"; the exchange's price: free it would capture {cf['0']:.2f}"
                 + (f" ({', '.join(more)})" if more else "")
                 if cf["0"] >= 0.6 else f"; not the exchange's price alone: free it would "
                 f"capture {cf['0']:.2f}")
    return (f"binds: {rule}; step {st['step']:.1f} vs pooled {pool['mean_step_ms']:.1f} ms: "
            + ", ".join(f"{k} +{v:.1f}" + (live if k == "exchange" else "") for k, v in top)
            + price)


def price_row(long: list[dict], headroom: float) -> list[str]:
    """The measured reason below 60% (``why.json``'s exchange counterfactuals, sim_why.py): in
    how many of those scenarios ``dcp`` would capture >= 60% were the exchange priced
    otherwise; the rest are named."""
    low = [r for r in long if r["captured_pooled"] is not None
           and r["captured_pooled"] < headroom]
    cfs = [(r, exchange_captured(r)) for r in low]
    have = [(r, c) for r, c in cfs if c.get("0") is not None]
    if not have:
        return []
    parts = []
    for k, n in (("0", "free"), ("items", "its wire per item (no bucket padding)"),
                 ("0.5", "at half price")):
        v = [c[k] for _, c in have if c.get(k) is not None]
        if v:
            parts.append(f"{n}: {sum(x >= headroom for x in v)} "
                         f"(median {statistics.median(v):.2f})")
    rest = [r["id"] for r, c in have if c["0"] < headroom]
    return [f"| below 60%: would the exchange's price explain it? (`dcp` searched with the "
            f"exchange priced otherwise, nothing else changed: a counterfactual) | of the "
            f"{len(have)} "
            f"scenarios below 60%, >= 60% with the exchange {'; '.join(parts)}"
            + (f"; not even free: {', '.join(rest)}" if rest else "")
            + f"{'' if len(have) == len(low) else f' ({len(low) - len(have)} without a run)'} | "
            "measured reason |"]
