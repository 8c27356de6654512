"""``verify()``: recompute a ledger policy's per-rank books from its live requests and check every
invariant (``state.LedgerPolicy``'s accounting). O(live requests); for tests and debugging."""

from __future__ import annotations

from sglang_dcp.planner.base import guest_ranks


class VerifiedBooks:
    """Mixin of ``state.LedgerPolicy``: its ``verify``."""

    def verify(self) -> None:
        """Recompute every aggregate from the live requests and check every invariant.

        O(live requests); for tests and debugging. Raises ``AssertionError`` naming the fault.
        """
        n, ps = self.num_ranks, self.page
        kv, used, batch, gin, gout, near = ([0] * n for _ in range(6))
        pairs = [[0] * n for _ in range(n)]
        for rid, rec in self._recs.items():
            pos = 0
            for r, s, e in rec.sealed:
                assert s == pos and e > s, f"{rid}: shard [{s},{e}) breaks coverage at {pos}"
                assert s % ps == 0 and e % ps == 0, f"{rid}: shard [{s},{e}) not page aligned"
                kv[r] += e - s
                used[r] += e - s
                pos = e
            assert pos == rec.tail_start, f"{rid}: sealed shards end at {pos} != tail start"
            assert rec.tail_start % ps == 0, f"{rid}: tail start {rec.tail_start} not aligned"
            assert rec.tail_start <= rec.length <= rec.resv_end, f"{rid}: tail out of range"
            assert rec.resv_end % ps == 0, f"{rid}: reservation end not aligned"
            kv[rec.home] += rec.resv_end - rec.tail_start + rec.transient
            used[rec.home] += rec.length - rec.tail_start
            batch[rec.home] += 1
            assert rec.guests == guest_ranks(rec.sealed, rec.home), f"{rid}: stale guests"
            for g in rec.guests:
                gin[g] += 1
                pairs[rec.home][g] += 1
                if self.cluster.same_node(g, rec.home):
                    near[g] += 1
                    near[rec.home] += 1
            gout[rec.home] += len(rec.guests)
            assert rid in self._homed[rec.home], f"{rid}: missing from home index"
            for g in rec.guests:
                assert rid in self._hosted[g], f"{rid}: missing from rank {g} guest index"
        for name, mine, ref in (
            ("kv", self.kv, kv), ("used", self.used, used), ("batch", self.batch, batch),
            ("gin", self.gin, gin), ("gout", self.gout, gout), ("near", self.near, near),
        ):
            assert mine == ref, f"aggregate {name} drifted: {mine} != {ref}"
        assert self.pairs == pairs, "pair counts drifted"
        assert self.busiest_pair() == max(max(row) for row in pairs), "busiest pair drifted"
        far = any(pairs[h][g] and not self.cluster.same_node(h, g)
                  for h in range(n) for g in range(n))  # fmt: skip
        assert self.cross_pairs() == far, "cross-node pairs drifted"
        assert sum(len(d) for d in self._homed) == len(self._recs), "home index drifted"
        assert sum(len(d) for d in self._hosted) == sum(gin), "guest index drifted"
        assert self.num_guest_items == sum(gin), "num_guest_items drifted"
        assert self._split_recs.keys() == {k for k, v in self._recs.items() if v.guests}, \
            "split index drifted"
        for r in range(n):
            # after ``restate`` the books follow the ranks, which may hold more than the budget
            assert 0 <= kv[r] and (self.restated or kv[r] <= self.cap[r]), (
                f"rank {r}: {kv[r]} reserved > capacity {self.cap[r]}"
            )
            assert self.cap[r] % ps == 0, f"rank {r}: capacity not page aligned"
