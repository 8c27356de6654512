"""The ``dcp`` policy's home choice (its docstring, rule 1): over the cached per-rank predicted
times (``rank_cost.RankCosts._touched``), O(num_ranks) per call."""

from __future__ import annotations


class HomeChoice:
    """Mixin of ``dcp.DcpPolicy``: ``_choose_home(need, resv)`` returns the home rank for a
    request needing ``need`` free KV tokens there and reserving ``resv``, or -1 if none can.
    ``home_tie`` (``"fullest"``, best fit, or ``"fewest"`` homed) breaks ties among the ranks
    that keep the predicted step where it is (``dcp.py``, rule 1)."""

    def _home_options(self, home_rule: str, home_tie: str) -> None:
        if home_rule not in ("batch", "step"):
            raise ValueError(f"dcp: home_rule must be 'batch' or 'step', got {home_rule!r}")
        if home_tie not in ("fewest", "fullest"):
            raise ValueError(f"dcp: home_tie must be 'fewest' or 'fullest', got {home_tie!r}")
        self.home_rule, self.home_tie = home_rule, home_tie

    def _choose_home(self, need: int, resv: int) -> int:
        cap, kv = self.cap, self.kv
        if self.home_rule == "step":
            return self._choose_home_step(need, resv)
        excl = self._excl
        if self.batch_slack == 0:
            k = min(self._keys)
            if cap[k[2]] - kv[k[2]] >= need and k[2] not in excl:
                return k[2]
            feas = [k for k in self._keys if cap[k[2]] - kv[k[2]] >= need and k[2] not in excl]
            return min(feas)[2] if feas else -1
        feas = [k for k in self._keys if cap[k[2]] - kv[k[2]] >= need and k[2] not in excl]
        if not feas:
            return -1
        lim = min(feas)[0] + self.batch_slack
        return min((c, r) for b, c, r in feas if b <= lim)[1]

    def _choose_home_step(self, need: int, resv: int) -> int:
        """The rank minimising the predicted step time with the whole request on it (d = 1),
        MoE barrier included; ties: fewest homed, then lowest index. Ranks in ``_excl`` (a
        targeted hold, ``hold.py``) are skipped."""
        batch, cost, free, excl = self.batch, self.cost, self._free, self._excl
        # score_r = max(cost_r, M - add) + moe_us_per_token * [batch_r >= max batch] (+ add)
        lvl = max(cost) - (self._a * resv + self._item + self._req)
        bmax = max(batch)
        mpt = self.profile.moe_us_per_token
        if self.home_tie == "fullest":
            k = min(
                (
                    ((c if c > lvl else lvl) + (mpt if b >= bmax else 0.0), -c, r)
                    for (b, c, r), f in zip(self._keys, free)
                    if f >= need and r not in excl
                ),
                default=None,
            )
            return -1 if k is None else k[2]
        bmin = min(batch)
        r0 = batch.index(bmin)
        if free[r0] >= need and cost[r0] <= lvl and r0 not in excl:
            return r0  # lowest possible score, and the fewest homed (lowest index) among them
        k = min(
            (
                ((c if c > lvl else lvl) + (mpt if b >= bmax else 0.0), b, r)
                for (b, c, r), f in zip(self._keys, free)
                if f >= need and r not in excl
            ),
            default=None,
        )
        return -1 if k is None else k[2]

    def whole_steps(self, resv: int) -> list[float | None]:
        """Per rank: the predicted step time (µs) with a request reserving ``resv`` KV tokens
        placed there whole (d = 1), MoE barrier included, as ``DcpPolicy._place`` predicts it;
        ``None`` where it has no room or the rank is held for another request. O(num_ranks)."""
        M, bmax = max(self.cost), max(self.batch)
        mpt, floor, cpt = self.profile.moe_us_per_token, self._floor, self._cpt
        held = self._hold_ranks if self._hold_rid is not None else ()
        out: list[float | None] = []
        for r, (b, c, _) in enumerate(self._keys):
            if self._free[r] < resv or r in held:
                out.append(None)
                continue
            peak = c + self._item + max(floor, cpt * (b + 1)) - max(floor, cpt * b) + self._req
            peak += self._a * resv
            out.append((peak if peak > M else M) + (mpt if b >= bmax else 0.0))
        return out
