"""Why ``dcp`` cannot place a request, now or ever (pure Python).

Mixed into ``DcpPolicy`` (which provides the ledger, ``min_shard_tokens``, ``max_degree`` and
``_sizes``): ``never_fits`` answers without placing anything; ``_reject`` builds the
``Rejection`` (retryable when an empty cluster could place it); ``_fits_empty`` is the
capacity test both share; ``_may_split_for_fit`` is ``dcp``'s rule 2 test (its docstring).
"""

from __future__ import annotations

from sglang_dcp.types import Rejection, Request


class Feasibility:
    def never_fits(self, request: Request, home_rank: int | None = None) -> Rejection | None:
        resv, pfull, splittable = self._sizes(request)
        extra = self._transient_bound(request.prompt_len, resv, pfull) if splittable else 0
        if self._fits_empty(resv, pfull, splittable, home_rank, extra):
            return None
        return self._reject(request, resv, pfull, splittable, pinned=home_rank)

    def _reject(self, req, resv, pfull, splittable, pinned=None) -> Rejection:
        extra = self._transient_bound(req.prompt_len, resv, pfull) if splittable else 0
        ever = self._fits_empty(resv, pfull, splittable, pinned, extra)
        tail = resv - pfull if splittable else resv
        chunk = f" + {extra} while its prefill passes a chunk through" if extra else ""
        what = (
            f"request {req.rid!r} needs {resv} KV tokens (prompt {req.prompt_len} + max_new "
            f"{req.max_new_tokens}, page-rounded; tail on home >= {tail}{chunk})"
        )
        cap, kv = self.cap, self.kv
        if pinned is not None:
            where = f"pinned home rank {pinned} ({cap[pinned] - kv[pinned]} free of {cap[pinned]})"
        else:
            where = (
                f"the cluster ({sum(cap) - sum(kv)} free of {sum(cap)}, "
                f"max_degree {self.max_degree})"
            )
        if ever:
            return Rejection(req.rid, f"{what}; {where} cannot place it now", retryable=True)
        return Rejection(
            req.rid, f"{what}; it does not fit {where} even when empty", retryable=False
        )

    def _fits_empty(self, resv, pfull, splittable, pinned, extra=0) -> bool:
        """``extra``: the home's prefill transient bound of a split (``prefill.py``)."""
        caps = self.cap
        homes = [pinned] if pinned is not None else range(self.num_ranks)
        if not splittable:
            return any(caps[h] >= resv for h in homes)
        ms, k = self.min_shard_tokens, self.max_degree - 1
        for h in homes:
            if caps[h] >= resv:  # whole: no split, no transient
                return True
            if caps[h] < resv - pfull + extra:
                continue
            others = sorted((c for r, c in enumerate(caps) if r != h and c >= ms), reverse=True)
            if caps[h] - extra + min(pfull, sum(others[:k])) >= resv:
                return True
        return False

    def _may_split_for_fit(self, resv: int, pinned: int | None) -> bool:
        """``split_rule="fit"``: split a request that no allowed home can hold whole now only if
        none ever could (capacity below ``resv``), or it is large against a rank (at least
        ``split_min_free`` of the largest rank's capacity: waiting for one rank to free that
        much takes many finishes), or at least ``split_min_free`` of the cluster's KV is free
        (fragmented, not full)."""
        cap = self.cap
        largest = cap[pinned] if pinned is not None else max(cap)
        f = self._split_free_share()
        if largest < resv or resv >= f * largest:
            return True
        total = sum(cap)
        return total - sum(self.kv) >= f * total

    def _fit_options(self, split_cost_k: float | None, gain_max_live: float = 0.0) -> None:
        if split_cost_k is not None and not split_cost_k >= 0:
            raise ValueError(f"dcp: split_cost_k must be >= 0 (0: off), got {split_cost_k}")
        if not gain_max_live >= 0:
            raise ValueError(f"dcp: gain_max_live must be >= 0 (0: off), got {gain_max_live}")
        self.gain_max_live = float(gain_max_live)
        self.split_cost_k = None if split_cost_k is None else float(split_cost_k)
        # what the first split adds to every step: the fixed exchange and the smallest wire,
        # priced across nodes even when scoped (priced within the node, the lower share split
        # more on 16-32 ranks and lost 2-19% in 5 of 15 scenarios tried; bench/NOTES.md)
        p = self.profile
        self._exchange_start_us = p.exchange_us_fixed + (
            self.wire_us(1) if self.bucketed else 2 * p.exchange_us_per_item)

    def _rule_now(self) -> str:
        """``split_rule`` for this admission: ``gain`` yields to ``fit`` while the cluster holds
        ``gain_max_live`` or more live requests per rank on average (0: never). With that many,
        the next whole placements level the ranks (each request is a small share of a rank's
        load), while every split keeps the fixed exchange live, which ``fixed_exchange="first"``
        stops charging once a guest exists (``"extend"``, auto's choice since, charges the
        steps a split adds to it). Issue 27 (``bench/NOTES.md``): Qwen3-235B on 8
        ranks, bimodal 35 / 50 ms 8.005 / 7.919 -> 8.359 req/s, a held-out bimodal (900k KV,
        40 ms) 6.575 -> 7.735; the agentic scenarios (1-3 live requests per rank) unchanged."""
        if self.split_rule == "gain" and self.gain_max_live and sum(
                self.batch) >= self.gain_max_live * self.num_ranks:
            return "fit"
        return self.split_rule

    def _split_free_share(self) -> float:
        """``split_min_free``, raised to ``split_cost_k`` times the share of the step budget
        that starting the exchange costs (fixed + the smallest bucket's wire; ``dcp.py`` rule
        2): where one split taxes every rank's step more, a request must be larger against a
        rank (or the cluster emptier) before a split for fit beats waiting for room. Issue 27:
        on 16-32 ranks the first split slows every rank by 8.7-10.3 ms (DeepSeek-V3, Kimi-K2
        profiles) and waiting served up to 1.3x more (``bench/results/sim.md``); on one 8-rank
        node (4.0 ms) the share stays near ``split_min_free``, where splitting for fit pays."""
        k, slo = self.split_cost_k, self.step_slo_us
        if k is None or slo is None:
            return self.split_min_free
        return min(1.0, max(self.split_min_free, k * self._exchange_start_us / slo))
