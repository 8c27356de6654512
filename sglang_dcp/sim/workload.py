"""Workloads: Mooncake-format request traces and built-in synthetic generators.

A workload is three aligned arrays (arrival time, prompt length, output length), sorted by
arrival. The simulator never reads a trace row twice, so everything is loaded up front.

Rate scaling keeps the trace's burst shape: timestamps are multiplied by ``native / target``,
where a rate is ``num_requests / span`` (span = last minus first arrival).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TRACE_FILES = {
    "conversation": "mooncake_conversation_trace.jsonl",
    "synthetic": "mooncake_synthetic_trace.jsonl",
}


@dataclass(frozen=True)
class Workload:
    """``arrival_ms[i]``: when request i is submitted (before prefill); lengths in tokens."""

    name: str
    arrival_ms: np.ndarray  # [num_requests] float64, non-decreasing
    input_len: np.ndarray  # [num_requests] int64, >= 1
    output_len: np.ndarray  # [num_requests] int64, >= 1 (the first token comes from prefill)
    meta: dict = field(default_factory=dict)
    # Sessions (``sessions.py``): parent[i] is the turn whose prompt + output prefixes request
    # i's prompt (-1: none); such a request is submitted think_ms[i] after its parent finished
    # (closed loop), its arrival_ms only orders it. None: every request is independent.
    parent: np.ndarray | None = None  # [num_requests] int64, parent[i] < i
    think_ms: np.ndarray | None = None  # [num_requests] float64, >= 0

    def __post_init__(self) -> None:
        n = len(self.arrival_ms)
        if len(self.input_len) != n or len(self.output_len) != n:
            raise ValueError(f"workload {self.name!r}: arrays have different lengths")
        if n and np.any(np.diff(self.arrival_ms) < 0):
            raise ValueError(f"workload {self.name!r}: arrivals must be sorted")
        if n and (self.input_len.min() < 1 or self.output_len.min() < 1):
            raise ValueError(f"workload {self.name!r}: lengths must be >= 1 token")
        if (self.parent is None) != (self.think_ms is None):
            raise ValueError(f"workload {self.name!r}: parent and think_ms go together")
        if self.parent is not None and (len(self.parent) != n or len(self.think_ms) != n or np.any(
                self.parent >= np.arange(n))):
            raise ValueError(f"workload {self.name!r}: parent[i] must be < i, one per request")

    def __len__(self) -> int:
        return len(self.arrival_ms)

    @property
    def span_ms(self) -> float:
        return float(self.arrival_ms[-1] - self.arrival_ms[0]) if len(self) > 1 else 0.0

    @property
    def rate_rps(self) -> float:
        """Native arrival rate: requests per second over the arrival span."""
        return len(self) / (self.span_ms / 1e3) if self.span_ms > 0 else float("inf")

    def at_rate(self, rate_rps: float) -> "Workload":
        """The same requests with arrivals compressed or stretched to ``rate_rps``."""
        if not rate_rps > 0:
            raise ValueError(f"rate must be > 0, got {rate_rps}")
        if self.span_ms == 0:
            return self
        t0 = self.arrival_ms[0]
        scale = self.rate_rps / rate_rps
        return Workload(
            name=self.name,
            arrival_ms=(self.arrival_ms - t0) * scale,
            input_len=self.input_len,
            output_len=self.output_len,
            meta={**self.meta, "rate_rps": rate_rps},
            parent=self.parent,
            think_ms=self.think_ms,
        )

    def head(self, n: int) -> "Workload":
        sess = {} if self.parent is None else {"parent": self.parent[:n],
                                               "think_ms": self.think_ms[:n]}
        return Workload(self.name, self.arrival_ms[:n], self.input_len[:n], self.output_len[:n],
                        dict(self.meta), **sess)


def load_trace(path: str | os.PathLike) -> Workload:
    """Read a Mooncake JSONL trace (``timestamp`` ms, ``input_length``, ``output_length``).

    Other fields (``hash_ids``) are ignored. Output lengths of 0 are read as 1: the prefill
    always emits one token.
    """
    path = Path(path)
    ts, inp, out = [], [], []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ts.append(float(row["timestamp"]))
                inp.append(int(row["input_length"]))
                out.append(int(row["output_length"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}:{lineno}: not a Mooncake trace row ({e!r}); expected JSON with "
                    f"timestamp, input_length, output_length"
                ) from None
    if not ts:
        raise ValueError(f"{path}: trace has no requests")
    order = np.argsort(np.asarray(ts), kind="stable")
    return Workload(
        name=path.stem.removeprefix("mooncake_").removesuffix("_trace"),
        arrival_ms=np.asarray(ts, dtype=np.float64)[order],
        input_len=np.maximum(np.asarray(inp, dtype=np.int64)[order], 1),
        output_len=np.maximum(np.asarray(out, dtype=np.int64)[order], 1),
        meta={"source": str(path)},
    )


def find_trace(name: str, repo_root: str | os.PathLike | None = None) -> Path | None:
    """Where the shared Mooncake trace ``name`` (conversation|synthetic) lives, if anywhere.

    Looks in ``$SGLANG_DCP_TRACE_DIR``, then ``../shared/data`` next to the repository.
    """
    fname = TRACE_FILES[name]
    root = Path(repo_root) if repo_root else Path(__file__).resolve().parents[2]
    dirs = [os.environ.get("SGLANG_DCP_TRACE_DIR"), root.parent / "shared" / "data"]
    for d in dirs:
        if d and (Path(d) / fname).is_file():
            return Path(d) / fname
    return None


@dataclass(frozen=True)
class LongTailSpec:
    """A long-context request mix: a lognormal body plus a Zipf tail over doubling length bands.

    With probability ``tail_frac`` a prompt comes from band k (lengths ``tail_min * 2**k`` to
    ``tail_min * 2**(k+1)``, log-uniform inside the band) with P(k) proportional to
    ``(k + 1) ** -zipf_s`` for k < ``tail_bands``; otherwise it is lognormal around
    ``body_median``. This is LoongServe's recipe (a Zipf mix of short chat and long-document
    datasets) in closed form. Arrivals are Poisson at ``rate_rps``.
    """

    num_requests: int = 2000
    rate_rps: float = 4.0
    body_median: int = 4000
    body_sigma: float = 0.9
    tail_frac: float = 0.25
    tail_min: int = 16384
    tail_bands: int = 4
    zipf_s: float = 1.2
    max_input: int = 200_000
    out_median: int = 250
    out_sigma: float = 0.8
    max_output: int = 4096


WORKLOADS: dict[str, LongTailSpec] = {
    "longtail": LongTailSpec(),
    "chat": LongTailSpec(body_median=1500, tail_frac=0.0, rate_rps=20.0),
    "tiny": LongTailSpec(num_requests=120, rate_rps=20.0, body_median=1500, tail_frac=0.2,
                         tail_min=8192, tail_bands=2, out_median=40, max_output=200),
}


def synthetic(spec: LongTailSpec | str, seed: int = 0, **overrides) -> Workload:
    """Draw a synthetic workload. ``spec`` is a ``LongTailSpec`` or a name in ``WORKLOADS``."""
    name = spec if isinstance(spec, str) else "custom"
    if isinstance(spec, str):
        if spec not in WORKLOADS:
            raise KeyError(f"unknown workload {spec!r}; choose one of {sorted(WORKLOADS)}")
        spec = WORKLOADS[spec]
    if overrides:
        spec = LongTailSpec(**{**spec.__dict__, **overrides})
    rng = np.random.default_rng(seed)
    n = spec.num_requests
    body = rng.lognormal(np.log(spec.body_median), spec.body_sigma, n)
    weights = (np.arange(spec.tail_bands) + 1.0) ** -spec.zipf_s
    band = rng.choice(spec.tail_bands, size=n, p=weights / weights.sum())
    tail = spec.tail_min * 2.0 ** (band + rng.random(n))
    is_tail = rng.random(n) < spec.tail_frac
    inp = np.clip(np.where(is_tail, tail, body), 1, spec.max_input).astype(np.int64)
    out = np.clip(rng.lognormal(np.log(spec.out_median), spec.out_sigma, n), 1,
                  spec.max_output).astype(np.int64)
    arrivals = np.cumsum(rng.exponential(1e3 / spec.rate_rps, n))
    arrivals -= arrivals[0]
    return Workload(name=name, arrival_ms=arrivals, input_len=inp, output_len=out,
                    meta={"seed": seed, "spec": spec.__dict__})


def workload_names() -> list[str]:
    """Every name ``make_workload`` takes: synthetic generators, published mixes, traces."""
    from sglang_dcp.sim.mixes import MIXES

    return [*WORKLOADS, *MIXES, *(f"sessions-{m}" for m in MIXES if m.startswith("agentic")),
            *(f"mooncake-{t}" for t in TRACE_FILES)]


def make_workload(name: str, seed: int = 0, num_requests: int | None = None) -> Workload:
    """Workload ``name`` (see ``workload_names``); ``mooncake-*`` reads the shared trace and
    ignores ``seed`` (``num_requests`` keeps its first requests). Unknown names: ``KeyError``."""
    from sglang_dcp.sim import mixes

    if name in WORKLOADS:
        extra = {} if num_requests is None else {"num_requests": int(num_requests)}
        return synthetic(name, seed=seed, **extra)
    if name.startswith("sessions-") and mixes.resolve(name.removeprefix("sessions-")):
        from sglang_dcp.sim.sessions import SessionSpec, draw_sessions  # 32 turns a session

        n = {} if num_requests is None else {"num_sessions": max(1, int(num_requests) // 32)}
        return draw_sessions(SessionSpec(mix=name.removeprefix("sessions-"), **n), seed=seed)
    if mixes.resolve(name) is not None:  # a mix, or <mix>@<context limit>
        return mixes.draw(name, seed=seed, num_requests=num_requests)
    trace = name.removeprefix("mooncake-")
    if name.startswith("mooncake-") and trace in TRACE_FILES:
        path = find_trace(trace)
        if path is None:
            raise FileNotFoundError(
                f"workload {name!r}: {TRACE_FILES[trace]} not found in $SGLANG_DCP_TRACE_DIR or "
                "../shared/data; pass --trace FILE")
        w = load_trace(path)
        return w if num_requests is None else w.head(int(num_requests))
    raise KeyError(f"unknown workload {name!r}; choose one of {', '.join(workload_names())}")
