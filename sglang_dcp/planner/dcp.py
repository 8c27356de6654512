"""``dcp``: request-level dynamic context parallelism.

Each request gets a home rank (its token's MoE dispatch, LM head and sampling) and a CP degree
``d``; its KV lives in ``d`` shards. Decisions use the cost profile's step-time model
(``CostProfile``; µs per step), the same one the simulator charges.

**Why the defaults are what they are.** A guest shard's gain is transient (it lowers the
slowest rank *now*, and the next admissions would level that rank anyway), while its exchange
cost recurs every step of the request's life on *both* ranks, plus a cluster-wide fixed cost per
step while any guest exists. Under the shipped profiles splitting for step-time balance loses
to not splitting (see ``bench/results/sim.md``); splitting pays when it lets a request run that
could not run whole: KV fragmentation. So:

1. **Home** (``home_rule="step"``, the default): the rank that minimises the predicted step
   time with the whole request on it, MoE barrier included (``max(M, rank_time + request) +
   moe_us_per_token`` if it would raise the largest batch; ``M`` = slowest rank now); among the
   ranks that keep the step where it is, the *fullest* (best fit, ``home_tie="fullest"``), then
   lowest index: it keeps the emptiest ranks' room under the step budget whole for long
   requests (``home_tie="fewest"``, fewest homed, spread short requests over them and left the
   long ones waiting for the budget; issue 27). ``home_rule="batch"``: the rank with the fewest
   homed requests (within ``batch_slack`` of the fewest), ties by predicted rank time.
2. **Split only for fit** (``split_rule="fit"``, the default): a request that some rank can
   hold whole is placed whole (``d = 1``) on the best such home. Otherwise it is split, with
   the home chosen among ranks that can hold its tail, *if* it can never fit whole (larger than
   every rank's capacity), or it is large against a rank (>= ``split_min_free`` of the largest
   rank's capacity: one rank frees that much only after many finishes, so waiting is long), or
   at least ``split_min_free`` (0.2) of the cluster's KV is free: then free KV exists but is
   fragmented, and waiting for one rank to drain is what a split saves. Otherwise the cluster is
   KV-bound for a small request; a split would only pack the last free pages at a recurring
   exchange cost, so it waits (retryable ``Rejection``). With a step budget both shares rise
   to ``split_cost_k`` x (what starting the exchange adds to every step) / budget
   (``feasibility.py``). ``split_rule="gain"``: the older rule, which also splits requests
   that fit when the predicted step ``max(M, peak) + exchange_fixed`` is lower by >
   ``min_gain_us`` (``fixed_exchange``: the fixed cost on every split, ``"always"``; on the
   first guest only, ``"first"``; while guests exist, the share of the request's reserved life
   that outlasts every live split's, ``"extend"``: the steps it adds to the fixed cost's run,
   ``_fixed_for``). ``split_rule="auto"``: ``fit`` for MLA, whose exchange item (a 576-wide q
   per head out, a 512-wide partial back) costs the attention of 3.6k-8.3k KV tokens, ``gain``
   with ``fixed_exchange="extend"`` for GQA/MHA (~500; ``break_even_tokens``; gain loses up to
   48% on MLA) below ``gain_max_live`` (8) live requests per rank (``feasibility.py``).
   ``"first"`` let each split after the first ride free, so splits kept the fixed cost on every
   step (Qwen3-235B, bimodal, 900k KV, 40 ms: guests live 100% of the time, 0.95x
   ``total_tokens``; ``"extend"`` 1.03x, ``bench/NOTES.md``).
3. **Shards** (when splitting): ``d = 2 .. max_degree``; guests are the ``d - 1`` ranks with
   free KV >= ``min_shard_tokens`` (by default the profile's break-even shard) and the lowest
   predicted time counting their exchange: with ``exchange_wire="scoped"`` (the default: what
   the server ships, ``wire_cost.py``) a pair that stays within the step's bucket and scope
   adds nothing, one that outgrows the bucket adds the next bucket's rows to every rank, and the
   first pair across nodes moves every rank from its node's peers to all ranks, so guests on
   the home's node within the bucket come first (``"bucketed"``: always all ranks); with
   ``"items"`` the item's own exchange (intranode rate on the home's node). The tokens are
   water-filled over home + guests so their predicted times (attention items and merge
   included) level out (guest shards >= ``min_shard_tokens``, page-aligned, only the prompt's
   full pages; the home keeps the tail: the last partial page plus ``max_new_tokens``). The
   plan with the lowest predicted step (the bucket it leads to included) wins; a larger ``d``
   must beat a smaller one by > ``min_gain_us``. If no plan fits, guests by most free KV. A plan
   that crosses nodes is taken only once the request has waited ``cross_wait_ms`` for one
   inside a node (default: only a request no node could ever hold crosses; ``node_first.py``).
4. **Step budget** (``step_slo_ms``, the operator's TPOT SLO; the simulator passes its SLO, the
   server's default is none): a placement whose predicted step (reserved KV, MoE barrier, fixed
   exchange and wire included) exceeds the budget waits instead, unless the cluster is empty
   (``budget.py``; ``step_gate="all"``, the default, for any degree; ``"split"`` only for
   splits). Admission is then both KV- and step-bounded: at a tight SLO the ranks run at the
   SLO instead of past it. Measured in ``bench/results/sim.md``.
5. **No migration by default** (``rebalance_threshold=None``): moving sealed shards for KV
   balance never paid in the simulator (it adds exchange for the rest of a request's life);
   with a threshold ``rebalance`` moves ranges (``rebalance.py``), and with a step budget only
   while a move lowers the predicted step; ``rejoin`` brings split requests home when that
   lowers it. 6. **Off by default** (issue 27): ``hold``, ``headroom_always``, ``age_ms``; on:
   ``exchange_room_ms``, ``live_quiet_ms`` (600 s each; ``budget.py``).

Short requests (fewer full prompt pages than ``min_shard_tokens``) never split. Loads are
reserved KV tokens (``kv_tokens()``: every live request at its reservation). Per-rank predicted
times are cached, refreshed for the ranks a call touches: ``admit`` is O(num_ranks).
"""

from __future__ import annotations

import math

from sglang_dcp.planner.base import ClusterSpec
from sglang_dcp.planner.profile import CostProfile
from sglang_dcp.planner.rank_cost import RankCosts
from sglang_dcp.planner.budget import STEP_GATES, StepBudget
from sglang_dcp.planner.feasibility import Feasibility
from sglang_dcp.planner.hold import TargetedHold
from sglang_dcp.planner.home import HomeChoice
from sglang_dcp.planner.node_first import NodeFirst
from sglang_dcp.planner.rebalance import SealedRangeRebalancer
from sglang_dcp.planner.state import LedgerPolicy, page_up
from sglang_dcp.planner.waterfill import GuestPlans
from sglang_dcp.planner.wire_cost import DEFAULT_CAPACITY, DEFAULT_WIRE, BucketedWire
from sglang_dcp.types import Rejection, Request


class DcpPolicy(TargetedHold, StepBudget, NodeFirst, GuestPlans, HomeChoice, Feasibility,
                SealedRangeRebalancer, RankCosts, BucketedWire, LedgerPolicy):
    name = "dcp"

    def __init__(
        self,
        cluster: ClusterSpec,
        profile: CostProfile,
        *,
        max_degree: int = 8,
        min_shard_tokens: int | None = None,
        min_gain_us: float = 0.0,
        batch_slack: int = 0,
        rebalance_threshold: float | None = None,
        home_rule: str = "step",
        fixed_exchange: str = "always",
        split_rule: str = "fit",
        split_min_free: float = 0.2,
        step_slo_ms: float | None = None,
        step_gate: str = "all",
        step_headroom: bool = True,
        prefill_chunk: int | None = None,
        hold: bool = False,
        home_tie: str = "fullest",
        headroom_always: bool = False,
        age_ms: float | None = None,
        age_overshoot: float = 0.1,
        exchange_wire: str = DEFAULT_WIRE,
        wire_capacity: int = DEFAULT_CAPACITY,
        rejoin: bool = False,
        split_cost_k: float | None = 4.0,
        exchange_room_ms: float | None = 600_000.0,
        live_quiet_ms: float | None = 600_000.0,
        gain_max_live: float = 8.0,
        cross_wait_ms: float | None = math.inf,
    ) -> None:
        super().__init__(cluster)
        if not isinstance(profile, CostProfile):
            raise TypeError(f"dcp needs a CostProfile, got {type(profile).__name__}")
        if max_degree < 1 or min_shard_tokens is not None and min_shard_tokens < 1:
            raise ValueError(f"dcp: need max_degree >= 1 (got {max_degree}) and "
                             f"min_shard_tokens >= 1 (got {min_shard_tokens})")
        if min_gain_us < 0 or batch_slack < 0 or (
                rebalance_threshold is not None and rebalance_threshold < 1.0):
            raise ValueError(
                "dcp: need min_gain_us >= 0, batch_slack >= 0 and rebalance_threshold >= 1")
        if fixed_exchange not in ("always", "first", "extend"):
            raise ValueError(f"dcp: fixed_exchange must be 'always', 'first' or 'extend', got "
                             f"{fixed_exchange!r}")
        if split_rule not in ("fit", "gain", "auto"):
            raise ValueError(
                f"dcp: split_rule must be 'fit', 'gain' or 'auto', got {split_rule!r}")
        if split_rule == "auto":  # by the exchange's price against attention (module docstring)
            split_rule = "fit" if profile.attention == "mla" else "gain"
            fixed_exchange = "always" if profile.attention == "mla" else "extend"
        if not 0.0 <= split_min_free <= 1.0 or step_slo_ms is not None and not step_slo_ms > 0:
            raise ValueError(f"dcp: need split_min_free in [0, 1] (got {split_min_free}) and "
                             f"step_slo_ms > 0 (got {step_slo_ms})")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"dcp: prefill_chunk must be >= 1 tokens, got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk  # prefill into shards: the home's transient
        if step_gate not in STEP_GATES:
            raise ValueError(f"dcp: step_gate must be one of {STEP_GATES}, got {step_gate!r}")
        self.step_slo_us = None if step_slo_ms is None else float(step_slo_ms) * 1e3
        self.step_gate = step_gate
        # hold.py; rebalance.py (rejoin: split requests' shards back home when that pays)
        self.hold, self.rejoin = bool(hold) and self.step_slo_us is not None, bool(rejoin)
        # a whole placement this close to the budget is split if that predicts a shorter step
        self.step_headroom_us = profile.exchange_us_fixed if step_headroom else 0.0
        self.split_rule, self.split_min_free = split_rule, float(split_min_free)
        self._home_options(home_rule, home_tie)
        self._budget_options(
            headroom_always, age_ms, age_overshoot, exchange_room_ms, live_quiet_ms)
        self.fixed_exchange, self.profile = fixed_exchange, profile
        self._wire_options(exchange_wire, wire_capacity)  # wire_cost.py
        self._fit_options(split_cost_k, gain_max_live)  # feasibility.py
        self.max_degree = min(max_degree, cluster.num_ranks)
        ms = profile.break_even_tokens() if min_shard_tokens is None else min_shard_tokens
        self.min_shard_tokens = page_up(ms, self.page)
        self.min_gain_us, self.batch_slack = float(min_gain_us), int(batch_slack)
        self.rebalance_threshold = rebalance_threshold and float(rebalance_threshold)
        self._rank_cost_init(profile)  # rank_cost.py: the cached predicted times
        self._node_first_options(cross_wait_ms)  # node_first.py

    def _fixed_for(self, req: Request, live: bool) -> float:
        """The fixed exchange (µs per step) a split of ``req`` is charged (rule 2): all of it
        while no guest exists; with guests, ``"always"`` all, ``"first"`` (and the fit rule's
        balance splits, ``live``) none, ``"extend"`` the share of ``req``'s life that outlasts
        every live split's reservation (it keeps the fixed cost on every step for that long)."""
        fixed = self.profile.exchange_us_fixed
        if not self.num_guest_items or self.fixed_exchange == "always" and not live:
            return fixed
        if self.fixed_exchange != "extend":
            return 0.0
        left = max((r.resv_end - r.length for r in self._split_recs.values()), default=0)
        return fixed * max(0.0, 1.0 - left / max(1, req.max_new_tokens))

    # ---- admission ------------------------------------------------------------------------

    def _sizes(self, req: Request) -> tuple[int, int, bool]:
        """(reserved KV tokens, the prompt's full-page tokens, whether it may be split)."""
        ps = self.page
        resv = page_up(req.prompt_len + req.max_new_tokens, ps)
        pfull = (req.prompt_len // ps) * ps
        return resv, pfull, self.max_degree > 1 and pfull >= self.min_shard_tokens

    def _plan(self, req: Request, home_rank: int | None):
        self._hold_enter(req.rid, home_rank)  # the ranks held for another request are out
        got = self._node_first_early(req, home_rank)  # node_first.py: no node has room
        if got is None:
            got = self._node_first(req, self._place(req, home_rank), home_rank)
        if not isinstance(got, Rejection) and self.step_slo_us is not None:
            got = self._gate(req, got, lambda: self._place(req, home_rank, split_only=True))
        got = self._timed(got)  # node_first.py: when a put-off crossing becomes allowed
        self._hold_exit(req.rid, home_rank, got)
        self._note_wait(req.rid, got)
        return got

    def _place(self, req: Request, home_rank: int | None, split_only: bool = False):
        """A plan ``(home, sealed, tail_start)`` or a ``Rejection``; ``split_only``: the best
        split (d >= 2) even if the request fits whole (the step budget asks for one)."""
        cap, kv = self.cap, self.kv
        resv, pfull, splittable = self._sizes(req)
        min_tail = resv - pfull
        ms = self.min_shard_tokens
        extra = self._transient_bound(req.prompt_len, resv, pfull) if splittable else 0
        need = min_tail + extra if splittable else resv
        live = self._live_split()  # budget.py: the fit rule also splits for balance
        fit = self._rule_now() == "fit" and splittable and not split_only and not live
        if home_rank is not None:
            h = home_rank
            if cap[h] - kv[h] < need:
                return self._reject(req, resv, pfull, splittable, pinned=h)
        else:
            if fit and (h := self._choose_home(resv, resv)) >= 0:  # whole on a home: no split
                return h, [], 0
            h = self._choose_home(need, resv)
            if h < 0:
                return self._reject(req, resv, pfull, splittable)
        free_h = cap[h] - kv[h]
        if fit:
            if free_h >= resv:
                return h, [], 0
            if not self._may_split_for_fit(resv, home_rank):
                return Rejection(
                    req.rid,
                    f"request {req.rid!r} needs {resv} KV tokens, no rank has them free and "
                    f"less than {self._split_free_share():.0%} of the cluster's KV is free: it "
                    "waits (a split would only pack the last free pages at a recurring exchange "
                    "cost)",
                    retryable=True,
                )
        a = self._a
        b = self.batch[h]
        base_h = self.cost[h] + self._item + max(self._floor, self._cpt * (b + 1)) - max(
            self._floor, self._cpt * b
        ) + self._req
        M = max(self.cost)
        best_score = None
        if free_h >= resv and not split_only:
            peak1 = base_h + a * resv
            if not splittable or peak1 <= M:
                return h, [], 0  # a split cannot lower the step time: d = 1
            best_score = (peak1 if peak1 > M else M) + self.wire_now_us()
            best = (h, [], 0)
        elif not splittable:  # pragma: no cover - need == resv guarantees free_h >= resv
            return self._reject(req, resv, pfull, splittable)
        fixed = self._fixed_for(req, live)
        cost = self.cost
        # guests by predicted time with their exchange (wire_cost.py: bucketed, pairs within the
        # step's bucket first; per item, same-node ranks first when cheaper)
        by_time = sorted(range(self.num_ranks), key=lambda r: cost[r] + self._guest_ex_us(h, r))
        room = free_h - extra  # the home's room for its tail while a chunk passes through
        plans = self._try_guests(h, by_time, resv, pfull, min_tail, room, base_h)
        if best_score is None and not plans:
            by_free = sorted(range(self.num_ranks), key=lambda r: (kv[r] - cap[r], r))
            plans = self._try_guests(h, by_free, resv, pfull, min_tail, room, base_h)
        for peak, sealed, tail_start in plans:
            score = (peak if peak > M else M) + fixed + self.wire_us(
                *self._busiest_with(h, [g for g, _, _ in sealed]))
            if best_score is None or score < best_score - self.min_gain_us:
                best_score, best = score, (h, sealed, tail_start)
        if best_score is None:
            rej = self._reject(req, resv, pfull, splittable, pinned=home_rank)
            # the home by step time may lack room for the split; the one with the most free KV
            # is the best for fit (what never_fits assumes): try it once before waiting
            h2 = max(range(self.num_ranks), key=lambda r: (cap[r] - kv[r], -r))
            if home_rank is not None or h2 == h or h2 in self._excl:
                return rej
            alt = self._place(req, h2, split_only)
            return rej if isinstance(alt, Rejection) else alt
        return best
