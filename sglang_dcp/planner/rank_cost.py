"""``dcp``'s cached per-rank predicted times (µs), refreshed for the ranks a call touches.

``cost[r]`` is ``CostProfile.rank_time_us`` of rank ``r``'s reserved KV, attention items, homed
batch and guest parts, inlined for speed (``admit`` is O(num_ranks)); with a bucketed wire the
exchange is one cluster-wide term (``wire_cost.py``), not part of a rank's time. ``_keys[r]`` =
``(batch, cost, rank)`` for the home choice, ``_free[r]`` = free KV tokens. ``verify`` checks the
cache against the profile.
"""

from __future__ import annotations


class RankCosts:
    """Mixin over ``LedgerPolicy`` and ``BucketedWire`` (``self.bucketed``)."""

    def _rank_cost_init(self, profile) -> None:
        p = profile
        self._a, self._item = p.attn_us_per_kv_token, p.attn_us_per_item
        # bucketed: the exchange is one cluster-wide term (wire_us), not per rank and item
        self._ex = 0.0 if self.bucketed else p.exchange_us_per_item
        self._near_disc = 0.0 if self.bucketed else p.near_discount_us()
        self._merge = p.merge_us_per_part
        self._floor = p.compute_us_floor
        self._cpt = p.compute_us_per_token
        self._req = p.attn_us_per_request  # window / linear-state part, per homed request
        self.cost = [0.0] * self.num_ranks  # predicted rank_time_us per rank
        self._keys = [(0, 0.0, 0)] * self.num_ranks  # (batch, cost, rank) for home choice
        self._free = [0] * self.num_ranks  # free KV tokens per rank (cap - reserved)
        for r in range(self.num_ranks):
            self._touched(r)

    def _touched(self, r: int) -> None:
        b, gi, go = self.batch[r], self.gin[r], self.gout[r]
        c = (
            self._a * self.kv[r]
            + self._item * (b + gi)
            + self._ex * (gi + go)
            - self._near_disc * self.near[r]
            + self._merge * go
            + max(self._floor, self._cpt * b)
        ) + self.profile.attn_us_fixed + self._req * b
        self.cost[r] = c
        self._keys[r] = (b, c, r)
        self._free[r] = self.cap[r] - self.kv[r]

    def verify(self) -> None:
        super().verify()
        assert self._free == [c - k for c, k in zip(self.cap, self.kv)], "free-KV cache drifted"
        # _touched inlines CostProfile.rank_time_us for speed: the two must agree.
        for r in range(self.num_ranks):
            b, gi, go = self.batch[r], self.gin[r], self.gout[r]
            want = self.profile.rank_time_us(self.kv[r], b + gi, b, gi, go, self.near[r]) - (
                self.profile.exchange_us(gi, go, self.near[r]) if self.bucketed else 0.0)
            assert abs(self.cost[r] - want) <= 1e-6 * max(1.0, want), (
                f"rank {r}: cached cost {self.cost[r]} != profile.rank_time_us {want}"
            )

    def rank_times(self) -> list[float]:
        """Predicted ``rank_time_us`` of every rank from the reserved KV (µs)."""
        return list(self.cost)
