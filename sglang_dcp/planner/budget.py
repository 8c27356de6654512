"""A step-time budget for ``dcp``: the operator's TPOT SLO as the planner's admission bound.

Mixed into ``DcpPolicy`` (which sets ``step_slo_us`` and ``step_gate`` and keeps the per-rank
predicted times ``cost``). Without a budget (``step_slo_ms=None``) nothing here runs.

A plan (``(home, sealed, tail_start)`` from ``DcpPolicy._place``) is admitted when the cluster's
predicted step with it, ``max_r rank_time_r + moe_us(max batch) + exchange_us_fixed`` (if any
guest item exists), is within the budget. A whole placement over the budget is replaced by the
best split that is within it (a long request whole on one rank can alone push that rank's
attention past the SLO). Otherwise the request waits (retryable rejection), for
``step_gate="split"`` only when the plan splits it (an exchange the step cannot afford), for
``"all"`` whatever its degree. A request is always admitted into an otherwise empty cluster
(the split if it predicts a shorter step): there is nothing to wait for. Near the budget
(within ``step_headroom_us``, the fixed exchange cost) and while guest items already exist, a
whole placement is split if that predicts a shorter step. Predicted times use reserved KV
(every live request at its full ``max_new_tokens``), the same view the rest of the planner
uses.

Variants, off by default (issue 27 measured them mixed on held-out seeds): ``headroom_always``
applies the near-budget split even while no guest exists; ``age_ms``: a request that has waited
that long since its first refusal (the clock is ``on_time``'s) gets ``1 + age_overshoot`` times
the budget: the SLO is on P99 TPOT, a mean over a request's steps, not on each step.
On by default (600 s; 0: off), ``exchange_room_ms``: within that long after a request that
must split (larger than every rank, or over the budget whole even on an idle rank), a whole
placement that leaves less than the exchange's start cost under the budget while no guest
exists is split if the split is within the budget: otherwise it bars every split, the waiting
one's included, while it lives (issue 27: Claude-like traffic on one 8-rank node at 35 ms, where
a ~200k-token request placed whole held the step at 31 ms and requests over ~300k waited for
it). Whatever its size: a request whose split cannot fit under the budget (the start cost is
in its predicted step) stays whole. Until 2026-12-07 only requests of at least the fit rule's
share of a rank were split so; with 600k-token ranks that share (216k) let a 210k request eat
the room, and `dcp` served 0.31x `uniform` (``bench/NOTES.md``). The clock is ``on_time``'s;
a caller that never calls it (the server today) gets a window that never closes (measured the
same there: 1e9 ms).
"""

from __future__ import annotations

from sglang_dcp.planner.state import page_up
from sglang_dcp.types import Rejection, Request

STEP_GATES = ("split", "all")


class StepBudget:
    def _budget_options(self, headroom_always: bool, age_ms: float | None,
                        age_overshoot: float, exchange_room_ms: float | None = None,
                        live_quiet_ms: float | None = None) -> None:
        if age_ms is not None and age_ms < 0 or age_overshoot < 0:
            raise ValueError("dcp: need age_ms >= 0 and age_overshoot >= 0")
        if exchange_room_ms is not None and exchange_room_ms < 0:
            raise ValueError(f"dcp: exchange_room_ms must be >= 0, got {exchange_room_ms}")
        self.exchange_room_ms = float(exchange_room_ms) if exchange_room_ms else None  # 0: off
        self._must_split_ms: float | None = None  # when a request last needed a split (ms)
        self.live_quiet_ms = float(live_quiet_ms) if live_quiet_ms else None  # 0: off
        self._budget_refused_ms: float | None = None  # the step budget's last refusal (ms)
        self.headroom_always = bool(headroom_always)
        self.age_ms = None if age_ms is None else float(age_ms)
        self.age_overshoot = float(age_overshoot)
        self._now_ms = 0.0
        self._waiting_since: dict[str, float] = {}  # rid -> first retryable refusal (ms)

    def _note_wait(self, rid: str, got) -> None:
        """Book when ``rid`` was first refused (``age_ms``, ``cross_wait_ms``); forget it once
        placed."""
        if self.age_ms is None and self.cross_wait_ms is None:
            return
        if not isinstance(got, Rejection):
            self._waiting_since.pop(rid, None)
        elif got.retryable and rid not in self._waiting_since:
            self._waiting_since[rid] = self._now_ms
            if len(self._waiting_since) > 4096:  # callers that gave up: forget the oldest
                del self._waiting_since[next(iter(self._waiting_since))]

    def _predicted_step_us(self, home: int, sealed: list[list[int]], tail: int) -> float:
        """The cluster's predicted step (µs) if a request homed on ``home`` with guest shards
        ``sealed`` (``[rank, start, end]``) and ``tail`` tokens at home were admitted."""
        p, cost, batch = self.profile, self.cost, self.batch
        a, item = self._a, self._item
        add: dict[int, float] = {}
        guests = {r for r, _, _ in sealed if r != home}
        b = batch[home]
        add[home] = a * tail + item + p.compute_us(b + 1) - p.compute_us(b) + self._req
        for r, s, e in sealed:
            add[r] = add.get(r, 0.0) + a * (e - s)
        for g in guests:  # one item each way: q out and (o, lse) back, merged at home
            ex = 0.0 if self.bucketed else p.item_exchange_us(self.cluster.same_node(g, home))
            add[g] += item + ex
            add[home] += ex + self._merge
        worst = max(cost)
        for r, d in add.items():
            if cost[r] + d > worst:
                worst = cost[r] + d
        fixed = p.exchange_us_fixed if (self.num_guest_items or guests) else 0.0
        wire = self.wire_us(*self._busiest_with(home, guests))  # bucketed: every rank's rows
        return worst + p.moe_us(max(max(batch), b + 1)) + fixed + wire

    def predicted_step_us(self) -> float:
        """The cluster's predicted step now (µs, reserved KV): slowest rank, MoE barrier, fixed
        exchange and the wire of the busiest pair (``wire_cost.py``), as the simulator charges."""
        p = self.profile
        fixed = p.exchange_us_fixed if self.num_guest_items else 0.0
        return max(self.cost) + p.moe_us(max(self.batch)) + fixed + self.wire_now_us()

    def on_time(self, now_ms: float, step: int) -> None:
        self._now_ms = now_ms

    def _exchange_room(self, req: Request, resv: int) -> bool:
        """``exchange_room_ms``: whether a request that must split (larger than every rank, or
        over the budget whole even on an idle rank) was seen within that window; ``req`` may be
        one. Then a large whole placement must leave the exchange's start cost under the budget
        (``_gate``), or the waiting splits could not start while it lives."""
        if self.exchange_room_ms is None:
            return False
        p = self.profile
        if resv > max(self.cap) or p.rank_time_us(resv, 1, 1, 0, 0, 0) + p.moe_us(1) > \
                self.step_slo_us:
            self._must_split_ms = self._now_ms
        t = self._must_split_ms
        return t is not None and self._now_ms - t <= self.exchange_room_ms

    def _live_split(self) -> bool:
        """``live_quiet_ms`` (issue 27): the fit rule splits for balance too, at the marginal
        price (the gain rule without the fixed exchange), while a guest exists, the predicted
        step is within the budget and no request was refused for the budget that long."""
        if self.live_quiet_ms is None or not self.num_guest_items or self.split_rule != "fit" \
                or self.step_slo_us is None or self.predicted_step_us() > self.step_slo_us:
            return False
        t = self._budget_refused_ms
        return t is None or self._now_ms - t >= self.live_quiet_ms

    def _budget_for(self, rid: str) -> float:
        """The step budget for ``rid`` (µs): the SLO, or ``1 + age_overshoot`` times it once
        ``rid`` has waited ``age_ms`` since its first refusal."""
        since = self._waiting_since.get(rid)
        if since is not None and self.age_ms is not None and \
                self._now_ms - since >= self.age_ms:
            return self.step_slo_us * (1.0 + self.age_overshoot)
        return self.step_slo_us

    def _aged_at(self, rid: str) -> float | None:
        """When ``rid``'s budget grows by ``age_overshoot`` (``age_ms`` after its first refusal,
        now if this is it); ``None``: no ``age_ms``, or it has already grown."""
        if self.age_ms is None:
            return None
        at = self._waiting_since.get(rid, self._now_ms) + self.age_ms
        return at if at > self._now_ms else None

    def _gate(self, req: Request, plan, split_plan):
        """``plan`` if its predicted step is within the budget; else a split from
        ``split_plan()`` that is (the whole placement would put too much attention on one rank);
        else ``plan`` into an empty cluster, or a retryable ``Rejection``."""
        resv = page_up(req.prompt_len + req.max_new_tokens, self.page)
        slo = self._budget_for(req.rid)
        home, sealed, tail_start = plan
        step = self._predicted_step_us(home, sealed, resv - tail_start)
        alt, alt_step = plan, step
        # Near the budget, and with the cluster already paying the fixed exchange (some guest
        # exists), a whole placement is split if that predicts a shorter step: one more split
        # costs only its items, and a rank loaded whole would hold back later admissions.
        near = slo - (self.step_headroom_us if (
            self.num_guest_items or self.headroom_always) else 0.0)
        room = self._exchange_room(req, resv) and not sealed and not self.num_guest_items
        if room:
            near = slo - self._exchange_start_us
        if step <= near or (sealed and step <= slo):
            return plan
        if not sealed and self.max_degree > 1:
            alt = split_plan()
            if not isinstance(alt, Rejection) and alt[1]:
                alt_step = self._predicted_step_us(alt[0], alt[1], resv - alt[2])
                if alt_step < step and (alt_step <= slo or not len(self)):
                    return alt
                # exchange_room: a whole placement that leaves less than the exchange's start
                # cost under the budget would bar every later split while it lives
                if room and alt_step <= slo and step > near:
                    return alt
        if step <= slo:
            return plan
        if not len(self) or (not sealed and self.step_gate == "split"):
            return plan  # an empty cluster: waiting cannot make room
        # what a targeted hold keeps ranks for (hold.py): the plan closest to the budget
        self._refused_plan = (alt[0], alt[1]) if alt_step < step else (home, sealed)
        self._budget_refused_ms = self._now_ms
        what = f"split over {len({r for r, _, _ in sealed} | {home})} ranks" if sealed else \
            f"on rank {home}"
        return Rejection(
            req.rid,
            f"request {req.rid!r} ({resv} KV tokens) {what} would predict a {step / 1e3:.1f} ms "
            f"step, over the {slo / 1e3:.1f} ms step budget: it waits",
            retryable=True,
            retry_at_ms=self._aged_at(req.rid),
        )
