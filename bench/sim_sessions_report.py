"""Markdown page of ``bench/sim_sessions.py`` (every sentence computed from the JSON)."""

from __future__ import annotations

import math

BASE = ("round_robin", "total_tokens", "total_tokens_sglang")


def _f(x, nd=3):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _ge(p):
    """">=" where the search never found a failing rate (the sessions all fit at once)."""
    return ">=" if p["max_rate_rps"] > 0 and p.get("precision") in (None, float("inf")) else ""


def _binds(p, slo, wait, stat):
    """What failed at the lowest failing rate above the max rate: ``wait``, ``tpot`` or both."""
    fails = [t for t in p["trials"] if not t["passed"] and t["rate_rps"] > p["max_rate_rps"]]
    if not fails:
        return "-"
    t = min(fails, key=lambda t: t["rate_rps"])
    tpot = t.get("mean_tpot_ms") if stat == "mean" else t["p99_tpot_ms"]
    why = [w for w, bad in (("wait", t["p99_kv_wait_ms"] is None or t["p99_kv_wait_ms"] > wait),
                            ("tpot", tpot is None or tpot > slo)) if bad]
    return "+".join(why) or "aborted"


def _sid(s):
    return f"{s['mix']}-{'node8' if s['ranks'] == 8 else 'r' + str(s['ranks'])}"


def write(doc: dict) -> str:
    env = doc["env"]
    L = ["# Simulator: multi-turn agentic sessions, prefix caches, PD deployment", "",
         f"- run: {env.get('date')}, commit `{env.get('commit')}`; hardware: {env.get('cpu')} "
         f"({env.get('cpu_count')} cores); Python {env.get('python')}; took "
         f"{doc['wall_s'] / 60:.1f} min", f"- command: `{env['command']}`",
         "- **all numbers are from the simulator** (`sglang_dcp/sim`) with the shipped, *derived* "
         "cost profiles (unchanged); nothing here ran on a GPU or a server.",
         "- what is modelled: closed-loop sessions (`sim/sessions.py`: TraceLab's context bins, "
         "appended tokens p50 793 / p90 3.7k and outputs of mean 523; 32-turn windows, so that "
         "an ideal cache serves TraceLab's ~96% of input tokens; 2 s mean think time is an "
         "assumption); per-rank prefix caches in free KV with LRU eviction "
         "(`sim/prefix_cache.py`); colocated prefill as a stall of every rank for the uncached "
         "tokens (`sim/deploy.py`); PD transfer time = the bytes each receiving rank gets at "
         "23.75 GB/s (Mooncake TE's published 190 GB/s on 8 x 400 Gbps RoCE, per NIC).",
         "- not modelled: prefix sharing between sessions, a prefill-side cache in PD, chunked "
         "prefill mixed with decode, overlap of two ranks' prefills (charged in series), the "
         "home's transient memory in `pd-home` (counted as `home overflow`, not refused).",
         f"- rates are requests/s (sessions start at rate / 32 per second); goodput = max rate "
         f"within the SLO x share served; SLO {doc['slo_tpot_ms']:g} ms, P99 wait for KV <= "
         f"{doc['max_kv_wait_ms'] / 1e3:g} s; {doc['sessions_per_8_ranks']} sessions per 8 "
         f"ranks, seed {doc['seed']}; search: hi/lo - 1 <= "
         f"{doc.get('search', {}).get('rel_precision', 0.03)} or "
         f"{doc.get('search', {}).get('max_runs', 12)} runs per policy; `>=`: no failing rate "
         "found (every session fits at once: the real bound is higher).", ""]
    rows = doc["scenarios"]
    # ---- colocated
    labels = list(rows[0]["groups"]["colocated"]["policies"])
    L += ["## Colocated: sharded prefix cache vs SGLang's per-rank radix caches", "",
          "Goodput (yardstick: token-weighted mean TPOT within the SLO; ratio to the best SGLang "
          "baseline):", "",
          "| scenario | best baseline (req/s) | " + " | ".join(labels) + " |",
          "|---|---|" + "---|" * len(labels)]
    gains, nocache = [], []
    for s in rows:
        g = s["groups"]["colocated"]["policies"]
        base = {k: g[k]["goodput_rps"] for k in BASE if k in g}
        b = max(base, key=base.get)
        best = base[b]
        cells = [_ge(g[k]) + (f"{g[k]['goodput_rps']:.3f}" if not best else
                              f"{g[k]['goodput_rps'] / best:.2f}x") for k in labels]
        L.append(f"| {_sid(s)} | {b} {_ge(g[b])}{best:.3f} | " + " | ".join(cells) + " |")
        if best and "dcp" in g and not _ge(g["dcp"]):
            gains.append((_sid(s), g["dcp"]["goodput_rps"] / best))
        if "dcp-nocache" in g and g["dcp-nocache"]["goodput_rps"]:
            nocache.append((_sid(s), g["dcp"]["goodput_rps"] / g["dcp-nocache"]["goodput_rps"]))
    L += ["", "What binds at the first failing rate above each max rate (`wait`: P99 wait "
          "for admission > 2 s, which in `colocated` includes waiting behind other prompts' "
          "prefill stalls; `tpot`: mean TPOT > SLO):", "",
          "| scenario | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for s in rows:
        g = s["groups"]["colocated"]["policies"]
        L.append(f"| {_sid(s)} | " + " | ".join(
            _binds(g[k], doc["slo_tpot_ms"], doc["max_kv_wait_ms"], "mean") for k in labels)
            + " |")
    L += ["", "At the reference rate (the best baseline's max rate): cache hit rate (prompt "
          "tokens served from cache) / turns placed on their cached layout / P99 TPOT ms / mean "
          "TPOT ms / P99 wait ms / rejected:", "",
          "| scenario | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for s in rows:
        g = s["groups"]["colocated"]["policies"]
        cells = []
        for k in labels:
            a = g[k]["at_reference"]
            cells.append(f"{a['cache_hit_rate']:.0%} / {a['layout_hits']} / "
                         f"{_f(a['p99_tpot_ms'], 0)} / {_f(a['mean_tpot_ms'], 1)} / "
                         f"{_f(a['p99_kv_wait_ms'], 0)} / {g[k]['rejected']}")
        L.append(f"| {_sid(s)} @ {s['groups']['colocated']['reference_rate_rps']:.3f} | "
                 + " | ".join(cells) + " |")
    L += ["", "At `dcp`'s max rate: cache hit rate / prefill stall (s, all ranks) / P99 wait s / "
          "mean TPOT ms:", "", "| scenario | " + " | ".join(labels) + " |",
          "|---|" + "---|" * len(labels)]
    for s in rows:
        g = s["groups"]["colocated"]["policies"]
        if not all("at_dcp_max" in g[k] for k in labels):
            continue
        cells = [f"{a['cache_hit_rate']:.0%} / {a['prefill_stall_ms'] / 1e3:,.0f} / "
                 f"{_f(a['p99_kv_wait_ms'] / 1e3, 1)} / {_f(a['mean_tpot_ms'], 1)}"
                 for a in (g[k]["at_dcp_max"] for k in labels)]
        L.append(f"| {_sid(s)} @ {g['dcp']['max_rate_rps']:.3f} | " + " | ".join(cells) + " |")
    prec = doc.get("search", {}).get("rel_precision", 0.03)
    L += ["", f"Computed from the tables (ratios within 1 +- {prec} are equal within the "
          "search's precision):", ""]
    if gains:
        w = [x for x in gains if x[1] > 1.02]
        L.append("- `dcp` with the sharded cache vs the best SGLang baseline: "
                 + ", ".join(f"{n} {r:.2f}x" for n, r in gains)
                 + f" (above 1.02x in {len(w)} of {len(gains)}).")
    if nocache:
        L.append("- the sharded cache's worth to `dcp` (goodput with it / without): "
                 + ", ".join(f"{n} {r:.2f}x" for n, r in nocache) + ".")
    p99_pass = sum(1 for s in rows for k, v in s["groups"]["colocated"]["policies"].items()
                   if any(t["p99_tpot_ms"] <= doc["slo_tpot_ms"]
                          and t["p99_kv_wait_ms"] <= doc["max_kv_wait_ms"]
                          for t in v["trials"]))
    L.append(f"- searched runs meeting a *P99* TPOT <= {doc['slo_tpot_ms']:g} ms and the wait "
             f"rule, colocated, any policy: {p99_pass} policy-scenario pairs have at least one.")
    # ---- PD
    labels = list(rows[0]["groups"]["pd"]["policies"])
    L += ["", "## PD: landing in shards vs landing on the home and shipping", "",
          "Goodput (P99 TPOT within the SLO, P99 wait for KV <= 2 s; transfer not a wait), "
          "then at the reference rate: P50 / P99 transfer ms, P99 time to the first decode step "
          "(prefill + wait + transfer), tokens shipped after landing, prompts larger than the "
          "home's free KV at landing:", "",
          "| scenario | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for s in rows:
        g = s["groups"]["pd"]["policies"]
        cells = []
        for k in labels:
            a = g[k]["at_reference"]
            cells.append(f"{_ge(g[k])}{g[k]['goodput_rps']:.3f} req/s; "
                         f"{_f(a['p50_transfer_ms'], 0)} / {_f(a['p99_transfer_ms'], 0)} ms; "
                         f"TTFT {_f(a.get('p99_ttft_ms'), 0)} ms; "
                         f"{a['shipped_tokens']:,} shipped; {a['home_overflow']} overflow")
        L.append(f"| {_sid(s)} | " + " | ".join(cells) + " |")
    cmp = []
    for s in rows:
        g = s["groups"]["pd"]["policies"]
        if "dcp pd" in g and "dcp pd-home" in g and g["dcp pd-home"]["goodput_rps"] and not (
                _ge(g["dcp pd"]) or _ge(g["dcp pd-home"])):  # both bracketed
            cmp.append((_sid(s), g["dcp pd"]["goodput_rps"] / g["dcp pd-home"]["goodput_rps"],
                        g["dcp pd-home"]["at_reference"]["p99_transfer_ms"]
                        / max(1e-9, g["dcp pd"]["at_reference"]["p99_transfer_ms"])))
    if cmp:
        L += ["", "Computed, where both searches found a failing rate: `dcp` landing in shards "
              "vs on the home (goodput ratio; P99 transfer ratio home / shards): "
              + ", ".join(f"{n} {a:.2f}x; {b:.2f}x" for n, a, b in cmp) + "."]
    return "\n".join(L) + "\n"
