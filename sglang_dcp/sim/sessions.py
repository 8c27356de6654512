"""Agentic sessions: turns that extend the previous prompt plus its output (issue 26 item 5).

Pure Python (numpy). A session is a window of ``turns`` consecutive agent steps of one Claude
Code / Codex session, after **TraceLab** (arXiv 2606.30560, ``shared/reference/anchors.md``
section 7):

- *first turn*: its prompt is a context drawn from the mix's cached-prefix bins (``mixes.py``:
  the published share of steps above 32k/64k/128k/256k tokens) plus appended tokens;
- *turn k > 1*: prompt = turn k-1's prompt + its output + appended tokens, appended tokens
  lognormal with TraceLab's Claude figures at 64-128k (p50 793, p90 3.7k), outputs exponential
  with TraceLab's mean of 523 tokens per step (both as in ``mixes.py``). So every turn after the
  first reuses the whole previous context as its prefix: at p50 793 appended tokens on 100k+
  contexts that is TraceLab's ~96% cached input tokens;
- a session ends after ``turns`` turns or when the next prompt plus output would pass the mix's
  top edge (an agent client compacts there: the session window ends);
- *closed loop*: turn k+1 is submitted ``think_ms`` after turn k finished (its output is part of
  the next prompt, so it cannot be sent earlier). Think time (the agent's tool calls) is
  exponential with mean ``think_mean_ms``: an **assumption**, TraceLab publishes no per-step tool
  time in the figures we hold.
- ``turns`` = 32: the window's first turn finds nothing cached, so the window length sets the
  share of input tokens an ideal cache serves; 32 turns give 96.4% (Claude) and 95.9% (Codex)
  with seed 0 (``test_sim_sessions``), TraceLab's "96% from cache". TraceLab's sessions have
  357,161 / 4,265 = 84 steps on average; a shorter window keeps runs short.
- Session starts are Poisson at ``rate / turns`` per second, so a workload's rate (``rate_rps``,
  what the goodput search scales) is requests per second when every session runs to its end.

The workload carries ``parent[i]`` (the index of the turn whose prompt plus output prefixes turn
``i``'s prompt, -1 for a first turn) and ``think_ms[i]``; ``arrival_ms`` of a later turn is only
its order key (the simulator releases it when its parent finishes). See ``Workload``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sglang_dcp.sim.mixes import resolve
from sglang_dcp.sim.workload import Workload


@dataclass(frozen=True)
class SessionSpec:
    mix: str = "agentic-claude"  # a key of mixes.MIXES (bins, appended tokens, outputs)
    num_sessions: int = 200
    turns: int = 32  # turns per window: an ideal cache then serves TraceLab's ~96% (docstring)
    think_mean_ms: float = 2000.0  # tool time between turns (assumption, no figure)
    rate_rps: float = 1.0  # requests per second (sessions start at rate / turns)


def draw_sessions(spec: SessionSpec, seed: int = 0) -> Workload:
    """Draw ``spec.num_sessions`` session windows; deterministic in ``seed``."""
    got = resolve(spec.mix)
    if got is None:
        raise KeyError(f"unknown mix {spec.mix!r}")
    mix, limit = got
    top = limit or mix.edges[-1]
    if spec.num_sessions < 1 or spec.turns < 1 or spec.think_mean_ms < 0 or spec.rate_rps <= 0:
        raise ValueError(f"bad session spec {spec}")
    rng = np.random.default_rng(seed)
    shares = np.asarray(mix.shares)
    starts = np.cumsum(rng.exponential(1e3 * spec.turns / spec.rate_rps, spec.num_sessions))
    starts -= starts[0]
    arrival, inp, out, parent, think = [], [], [], [], []
    for s in range(spec.num_sessions):
        b = rng.choice(len(shares), p=shares / shares.sum())
        lo, hi = np.log(mix.edges[b]), np.log(mix.edges[b + 1])
        ctx = float(np.exp(lo + (hi - lo) * rng.random()))
        prev = -1
        for k in range(spec.turns):
            app = rng.lognormal(np.log(mix.append_p50), mix.append_sigma) \
                if mix.append_p50 > 0 else 0.0
            o = int(np.clip(np.ceil(rng.exponential(mix.out_mean)), 1, mix.max_output))
            prompt = int(max(ctx + app, 1))
            if prompt + o > top:
                if k:  # the client compacts here: the window ends
                    break
                prompt = max(1, top - o)
            arrival.append(starts[s] if k == 0 else starts[s] + 1e-3 * k)  # order key only
            inp.append(prompt)
            out.append(o)
            parent.append(prev)
            think.append(0.0 if k == 0 else float(rng.exponential(spec.think_mean_ms)))
            prev = len(inp) - 1
            ctx = prompt + o
    order = np.argsort(np.asarray(arrival), kind="stable")
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    par = np.asarray(parent, dtype=np.int64)[order]
    par = np.where(par >= 0, inv[np.maximum(par, 0)], -1)
    return Workload(
        name=f"sessions-{spec.mix}",
        arrival_ms=np.asarray(arrival, dtype=np.float64)[order],
        input_len=np.asarray(inp, dtype=np.int64)[order],
        output_len=np.asarray(out, dtype=np.int64)[order],
        meta={"seed": seed, "source": f"{mix.source}; sessions: sim/sessions.py",
              "spec": spec.__dict__},
        parent=par,
        think_ms=np.asarray(think, dtype=np.float64)[order],
    )


def session_ids(w: Workload) -> np.ndarray:
    """[num_requests] int64: the index of each request's first turn (its session's key)."""
    root = np.arange(len(w), dtype=np.int64)
    if w.parent is None:
        return root
    for i in range(len(w)):  # parents come first in arrival order
        p = int(w.parent[i])
        if p >= 0:
            root[i] = root[p]
    return root
