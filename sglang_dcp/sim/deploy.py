"""Where prefill runs and how a request's KV reaches the decode ranks (``SimOptions.deployment``).

Pure Python. The event loop (``engine.simulate``) asks this module three things: how long after
its arrival a request is ready for the decode cluster, what admitting it costs (a stall of every
rank, or a transfer before its first decode step), and which KV copies follow.

``decode`` (the default; every earlier result): prefill runs elsewhere and takes
``prefill_ms(prompt)`` before the request is ready; its KV then appears in its shards at no
cost. No prefix cache.

``colocated``: prefill runs on the decode ranks (SGLang with DP attention). With EP every
forward is a barrier over all ranks, so prefilling a prompt's uncached tokens stalls every
rank's decode for ``prefill_ms(L) - prefill_ms(hit)`` (the profile's prefill is cumulative in the
prompt length, so this is the cost of tokens ``[hit, L)`` attending over everything before them;
``cost.StepModel.prefill_ms``, with the exchange of prefill into shards past one rank),
charged in series at admission (two prompts prefilled in the same forward on two ranks would
overlap: an upper bound). Prefix caches per rank (``prefix_cache.py``): every policy keeps
finished turns' KV in its ranks' free memory and hits where a new turn lands on a rank holding its
session's piece; SGLang's dispatchers route blind to it (``round_robin`` by counter,
``total_tokens`` by load: SGLang 0.5.21's DP controller does not look at the tree, and its load
counts evictable cache as free, ``num_used = total - (available + evictable)`` in
``scheduler_components/pool_stats_observer.py``, as the books here do), ``dcp`` with
``cache_layout`` first tries the cached layout (``planner/cached.py``).

``pd`` (issue 24 item 7): prefill on a separate prefill cluster, then its KV is transferred to
the decode ranks the planner chose, each holder receiving its own range in parallel: the first
decode step waits ``max over holders of tokens_r * kv_bytes_per_token / pd_gbps``. ``pd-home``:
the whole prompt lands on the home (``tokens * kv_bytes_per_token / pd_gbps``), then its sealed
ranges are shipped to their holders on the decode cluster's copy channel (``channel.py``: FIFO,
at the migration bandwidth, read on the home until they land), as the colocated server ships
sealed shards today. The home must then hold the whole prompt while it lands: a request larger
than the home's free KV cannot land on it (counted in ``DeployStats.home_overflow``; the books,
which keep only the final layout, do not refuse it). A session's later turn prefills only what
the prefill server's radix cache lacks, its prompt beyond the previous turn's *prompt* (the
output was decoded on the decode side and never entered the prefill tree; the router is assumed
to send the turn to the prefill worker holding it, as smg's cache-aware policy does):
``prefill_ms(L) - prefill_ms(previous prompt)``. The prefill cluster is not a shared resource
here (no queue). While its KV lands a request is left out of its home's decode batch but its
guest items already count (a slight overestimate of the step, the same for both variants). No
decode-side prefix cache in either (SGLang 0.5.21's ``--disaggregation-decode-enable-radix-cache``
is off by default).

``pd_gbps`` is the cost profile's ``pd_gbps_per_rank`` (its provenance: Mooncake Transfer
Engine's published 190 GB/s on 8 x 400 Gbps RoCE NICs, kvcache-ai/Mooncake README, 40 GB
transfers, divided by 8: one 400 Gbps NIC per decode GPU, so 23.75 GB/s into each holder) unless
``--pd-gbps`` overrides it. The prefill side's senders are assumed not to bind (the transfer is
receiver-bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sglang_dcp.planner.cached import admit_on_layout
from sglang_dcp.sim.prefix_cache import PrefixCache
from sglang_dcp.types import Placement, Rejection, Request

DEPLOYMENTS = ("decode", "colocated", "pd", "pd-home")


@dataclass
class DeployStats:
    """Per run: what prefill, caches and transfers cost (all requests admitted)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from a prefix cache
    layout_hits: int = 0  # turns admitted on their cached layout (dcp with cache_layout)
    prefill_stall_ms: float = 0.0  # colocated: decode stalled for prefill
    transfer_ms: list = field(default_factory=list)  # pd: per request, until its first step
    shipped_tokens: int = 0  # pd-home: tokens copied again after landing
    home_overflow: int = 0  # pd-home: prompts larger than the home's free KV at landing

    def summary(self) -> dict:
        t = np.asarray(self.transfer_ms) if self.transfer_ms else np.zeros(1)
        return {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "cache_hit_rate": self.cached_tokens / max(1, self.prompt_tokens),
                "layout_hits": self.layout_hits, "prefill_stall_ms": self.prefill_stall_ms,
                "p50_transfer_ms": float(np.percentile(t, 50)),
                "p99_transfer_ms": float(np.percentile(t, 99)),
                "shipped_tokens": self.shipped_tokens, "home_overflow": self.home_overflow}


class Deployment:
    """One run's deployment: ``admit`` wraps ``Policy.admit``; ``finished`` feeds the cache."""

    def __init__(self, kind: str, policy, model, workload, *, prefix_cache: bool = True,
                 cache_layout: bool = False, pd_gbps: float | None = None) -> None:
        if kind not in DEPLOYMENTS:
            raise ValueError(f"deployment must be one of {DEPLOYMENTS}, got {kind!r}")
        self.kind, self.policy, self.model = kind, policy, model
        gbps = model.profile.pd_gbps_per_rank if pd_gbps is None else pd_gbps
        if kind.startswith("pd") and gbps is None:
            raise ValueError(f"cost profile {model.profile.name!r} gives no pd_gbps_per_rank (GB/s "
                             "into one decode rank): add it with its provenance, or pass --pd-gbps")
        if gbps is not None and not gbps > 0:
            raise ValueError(f"pd_gbps must be > 0, got {gbps}")
        self.pd_gbps = None if gbps is None else float(gbps)  # GB/s into one decode rank
        n = policy.num_ranks if hasattr(policy, "num_ranks") else len(policy.batch_sizes())
        self.cache = PrefixCache(n) if kind == "colocated" and prefix_cache else None
        self.cache_layout = cache_layout and self.cache is not None
        self.parent = workload.parent
        if workload.parent is not None:
            from sglang_dcp.sim.sessions import session_ids

            self.session = session_ids(workload)
        else:
            self.session = np.arange(len(workload))
        self.stats = DeployStats()

    def pre_ms(self, input_len: np.ndarray) -> np.ndarray:
        """[num_requests] ms from submission to ready for the decode cluster."""
        if self.kind == "colocated":
            return np.zeros(len(input_len))
        full = np.asarray(self.model.prefill_ms(input_len), dtype=np.float64)
        if self.kind == "decode" or self.parent is None:
            return full
        par = self.parent
        has = par >= 0
        cached = np.where(has, input_len[np.maximum(par, 0)], 0)
        return np.where(has, full - np.asarray(self.model.prefill_ms(cached), dtype=np.float64)
                        * has, full)

    def admit(self, i: int, req: Request) -> tuple[Placement | Rejection, float, float, list]:
        """``(placement or rejection, stall_ms, land_ms, ships)``: every rank stalls
        ``stall_ms`` now; the request's first decode step waits ``land_ms``; ``ships`` are
        ``(src, dst, tokens)`` copies that follow its landing (``pd-home``)."""
        s = int(self.session[i])
        got = None
        if self.cache_layout and self.parent is not None and self.parent[i] >= 0:
            lay = self.cache.cached_layout(s)
            if lay is not None:
                got = admit_on_layout(self.policy, req, *lay)
                if got is not None:
                    self.stats.layout_hits += 1
        if got is None:
            got = self.policy.admit(req)
        if isinstance(got, Rejection):
            return got, 0.0, 0.0, []
        L = req.prompt_len
        self.stats.prompt_tokens += L
        shards = _prompt_ranges(got, L)
        if self.kind == "colocated":
            hit = self.cache.hit(s, shards, L) if self.cache is not None else 0
            if self.cache is not None:
                self.cache.take(s, shards)
                self.fit()
            self.stats.cached_tokens += hit
            full, cached = self.model.prefill_ms(np.array([L, hit]))
            stall = float(full - cached)
            self.stats.prefill_stall_ms += stall
            return got, stall, 0.0, []
        if self.kind == "decode":
            return got, 0.0, 0.0, []
        B = self.model.profile.kv_bytes_per_token / (self.pd_gbps * 1e9) * 1e3  # ms per token
        if self.kind == "pd":
            land = max(e - st for _, st, e in shards) * B
            self.stats.transfer_ms.append(land)
            return got, 0.0, land, []
        home = got.home_rank
        ships = [(home, r, e - st) for r, st, e in shards if r != home and e > st]
        away = sum(k for _, _, k in ships)
        if away > self.policy.free_kv()[home]:  # the home's books hold only its own range
            self.stats.home_overflow += 1
        self.stats.shipped_tokens += away
        land = L * B
        self.stats.transfer_ms.append(land)
        return got, 0.0, land, ships

    def finished(self, i: int, placement: Placement, length: int) -> None:
        """Request ``i`` finished with ``length`` tokens written (its policy books freed)."""
        if self.cache is None:
            return
        sealed = [[x.rank, x.start, x.end] for x in placement.shards[:-1]]
        self.cache.store(int(self.session[i]), [(x.rank, x.start, x.end) for x in
                                                placement.shards],
                         length, placement.home_rank, sealed, placement.shards[-1].start)
        self.fit()

    def fit(self) -> None:
        if self.cache is not None:
            self.cache.fit(self.policy.free_kv())


def _prompt_ranges(p: Placement, prompt_len: int) -> list[tuple[int, int, int]]:
    """(rank, start, end) of the prompt's tokens per shard (the tail clipped to the prompt)."""
    last = len(p.shards) - 1
    return [(x.rank, x.start, prompt_len if k == last else min(x.end, prompt_len))
            for k, x in enumerate(p.shards)]


def written_by_rank(p: Placement, length: int) -> list[tuple[int, int]]:
    """(rank, tokens) of a request's KV that exist at ``length`` tokens; the tail is unbounded."""
    out = []
    last = len(p.shards) - 1
    for i, s in enumerate(p.shards):
        end = length if i == last else min(s.end, length)
        if end > s.start:
            out.append((s.rank, end - s.start))
    return out
