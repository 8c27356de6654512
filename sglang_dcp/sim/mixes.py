"""Long-context request mixes drawn from published length statistics (seeded, Poisson arrivals).

``agentic-claude`` / ``agentic-codex``: one request per agent step of real Claude Code / Codex
sessions, after **TraceLab** (arXiv 2606.30560, github uw-syfi/TraceLab; 4,265 sessions,
357,161 agent steps; ``shared/reference/anchors.md`` section 7):

- *cached prefix* by the published share of steps above 32k / 64k / 128k / 256k tokens:
  Claude 87.4 / 72.4 / 48.5 / 23.7 %, Codex 89.7 / 75.9 / 42.2 / ~0 %. Inside a bin the prefix
  is log-uniform. The published bins are doublings; the two open ends are **assumptions** (no
  figure): the lowest bin is [8k, 32k) (two doublings below the first published edge) and the
  top bin one more doubling, [256k, 512k) (Claude; Codex has no steps above 256k).
- *appended tokens* per step (the uncached part of the prompt), lognormal with TraceLab's
  Claude figures at 64-128k prefix: p50 793, p90 3.7k (sigma = ln(3700 / 793) / 1.2816).
  The request's prompt is prefix + appended: the simulator has no prefix cache, so the decode
  cluster holds the whole context.
- *output*: exponential (ServeGen, arXiv 2505.09999: outputs fit an exponential) with TraceLab's
  mean of 186.9M output tokens / 357,161 steps = 523 tokens per step.

``bimodal``: the vLLM DyCP RFC (#29295) traffic shape, "<2k tokens on the short tail,
>64k-128k on the long tail": short prompts log-uniform in [128, 2048), long ones log-uniform in
[64k, 128k). The RFC gives no share of long requests; ``long_frac`` = 0.2 is an **assumption**
(change it in ``MIXES`` to study another share). Outputs as in the agentic mixes.

``chat-agentic``: chat and agentic traffic on one fleet (held-out regimes of issue 27): half the
requests are chat turns, prompt log-uniform in [256, 8k), half are ``agentic-claude`` steps
(its bins and shares, halved). The 50/50 share and the chat range are **assumptions** (no
figure); both halves get the agentic appended tokens and outputs.

Sessions are not modelled (steps of one session arrive independently); arrivals are Poisson.

``<mix>@<limit>`` (e.g. ``agentic-claude@160k``, ``bimodal@1m``): the mix for a model whose
context holds ``limit`` tokens (issue 29). A request never exceeds it: its prompt is cut to
``limit - output`` (an agent client compacts at the model's limit). Where the limit is above the
mix's top edge, the top bin stretches to it: the agentic mixes' share above 256k spreads
log-uniformly up to the limit (no published figure above 256k: an **assumption**); ``bimodal``'s
long tail is always the top doubling of the context, ``[limit/2, limit)`` (an **assumption**; the
RFC's 64k-128k is that rule at a 128k context).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sglang_dcp.sim.workload import Workload

K = 1024


@dataclass(frozen=True)
class BinnedSpec:
    """Prompt = a prefix drawn log-uniformly inside bins with given shares + appended tokens."""

    edges: tuple[int, ...]  # bin edges in tokens, len(shares) + 1
    shares: tuple[float, ...]  # probability of each bin, sums to 1
    append_p50: float = 0.0  # appended tokens: lognormal median (0: none)
    append_sigma: float = 0.0
    out_mean: float = 523.0  # exponential output length mean
    max_output: int = 16384
    num_requests: int = 1500
    rate_rps: float = 1.0  # native rate; the goodput search rescales it
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.shares) + 1:
            raise ValueError("BinnedSpec: need one more edge than shares")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])) or self.edges[0] < 1:
            raise ValueError("BinnedSpec: edges must be increasing and >= 1")
        if abs(sum(self.shares) - 1.0) > 1e-9 or min(self.shares) < 0:
            raise ValueError(f"BinnedSpec: shares must be >= 0 and sum to 1, got {self.shares}")


def _shares_from_tail(above: tuple[float, ...]) -> tuple[float, ...]:
    """Bin shares from the published "share of steps above edge k" (decreasing)."""
    s = (1.0, *above, 0.0)
    return tuple(max(0.0, a - b) for a, b in zip(s, s[1:]))


_APPEND_SIGMA = float(np.log(3700 / 793) / 1.2815516)  # TraceLab Claude p50 793, p90 3.7k
_TRACELAB = "TraceLab arXiv 2606.30560 (anchors section 7)"

MIXES: dict[str, BinnedSpec] = {
    "agentic-claude": BinnedSpec(
        edges=(8 * K, 32 * K, 64 * K, 128 * K, 256 * K, 512 * K),
        shares=_shares_from_tail((0.874, 0.724, 0.485, 0.237)),
        append_p50=793, append_sigma=_APPEND_SIGMA, source=f"{_TRACELAB}, Claude Code steps"),
    "agentic-codex": BinnedSpec(
        edges=(8 * K, 32 * K, 64 * K, 128 * K, 256 * K),
        shares=_shares_from_tail((0.897, 0.759, 0.422)),
        append_p50=793, append_sigma=_APPEND_SIGMA, source=f"{_TRACELAB}, Codex steps"),
    "chat-agentic": BinnedSpec(
        edges=(256, 8 * K, 32 * K, 64 * K, 128 * K, 256 * K, 512 * K),
        shares=(0.5, *(x / 2 for x in _shares_from_tail((0.874, 0.724, 0.485, 0.237)))),
        append_p50=793, append_sigma=_APPEND_SIGMA,
        source=f"half chat [256, 8k) (assumption), half {_TRACELAB} Claude Code steps"),
    "bimodal": BinnedSpec(
        edges=(128, 2 * K, 64 * K, 128 * K), shares=(0.8, 0.0, 0.2),
        source="vLLM DyCP RFC #29295 (<2k short, 64k-128k long); 20% long is an assumption"),
}


def parse_limit(text: str) -> int:
    """Tokens of ``"160k"``, ``"1m"`` or ``"131072"`` (k = 1024, m = 1024^2)."""
    t = text.strip().lower()
    mult = {"k": K, "m": K * K}.get(t[-1:], 1)
    v = int(float(t[:-1] if mult > 1 else t) * mult)
    if v < 2 * K:
        raise ValueError(f"context limit must be >= 2k tokens, got {text!r}")
    return v


def resolve(name: str) -> tuple[BinnedSpec, int | None] | None:
    """The spec and context limit of ``name`` (a key of ``MIXES`` or ``<key>@<limit>``)."""
    base, _, lim = name.partition("@")
    if base not in MIXES:
        return None
    spec = MIXES[base]
    if not lim:
        return spec, None
    limit = parse_limit(lim)
    e = spec.edges
    if base == "bimodal":
        edges = (*e[:2], max(e[1] + 1, limit // 2), limit)
    elif limit > e[-1]:
        edges = (*e[:-1], limit)
    else:
        edges = e
    return replace(spec, edges=edges), limit


def draw(name: str, seed: int = 0, num_requests: int | None = None) -> Workload:
    """Draw mix ``name`` (a key of ``MIXES``, or ``<key>@<limit>``) with ``seed``;
    deterministic."""
    got = resolve(name)
    if got is None:
        raise KeyError(f"unknown mix {name!r}; choose one of {sorted(MIXES)} (or <mix>@<limit>)")
    spec, limit = got
    n = spec.num_requests if num_requests is None else int(num_requests)
    if n < 1:
        raise ValueError(f"num_requests must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    shares = np.asarray(spec.shares)
    b = rng.choice(len(shares), size=n, p=shares / shares.sum())
    lo = np.log(np.asarray(spec.edges[:-1], dtype=np.float64))[b]
    hi = np.log(np.asarray(spec.edges[1:], dtype=np.float64))[b]
    prefix = np.exp(lo + (hi - lo) * rng.random(n))
    append = (rng.lognormal(np.log(spec.append_p50), spec.append_sigma, n)
              if spec.append_p50 > 0 else np.zeros(n))
    inp = np.maximum(prefix + append, 1).astype(np.int64)
    out = np.clip(np.ceil(rng.exponential(spec.out_mean, n)), 1, spec.max_output).astype(np.int64)
    if limit is not None:  # the model's context: prompt + output <= limit
        out = np.minimum(out, limit // 2)
        inp = np.minimum(inp, limit - out)
    arrivals = np.cumsum(rng.exponential(1e3 / spec.rate_rps, n))
    arrivals -= arrivals[0]
    return Workload(name=name, arrival_ms=arrivals, input_len=inp, output_len=out,
                    meta={"seed": seed, "source": spec.source})
