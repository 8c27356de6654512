"""Bounded migration of sealed KV ranges, for policies that split requests (``dcp``).

Mixed into a ``LedgerPolicy`` that has ``min_shard_tokens``, ``max_degree`` and
``rebalance_threshold``; it moves KV only through ``LedgerPolicy._move``, so every aggregate
and the coverage invariant stay exact.
"""

from __future__ import annotations

from sglang_dcp.planner.base import Migration


class SealedRangeRebalancer:
    def rebalance(self, max_moved_tokens: int) -> list[Migration]:
        """While ``max(kv) / mean(kv) > rebalance_threshold``, move sealed, written,
        page-aligned ranges from the most loaded rank to the least loaded one with room; at most
        ``max_moved_tokens`` in total, never a tail, never over capacity, never past
        ``max_degree``; a range that creates a new guest is at least ``min_shard_tokens``.
        Each move takes at most half the gap between the two ranks, so moves never oscillate.
        With a step budget (``step_slo_ms``) a move is kept only if it lowers the predicted step
        (slowest rank plus the cluster's fixed exchange cost); the first that does not is undone
        and ends the round.
        """
        moves: list[Migration] = self._rejoin(max_moved_tokens) if self.rejoin else []
        if self.rebalance_threshold is None:  # migration off (dcp's default)
            return moves
        budget = max_moved_tokens - sum(m.end - m.start for m in moves)
        ps, n = self.page, self.num_ranks
        while budget >= ps:
            kv, cap = self.kv, self.cap
            total = sum(kv)
            if total == 0:
                break
            src = max(range(n), key=lambda r: (kv[r], -r))
            if kv[src] * n <= self.rebalance_threshold * total:
                break
            room = [(kv[r], r) for r in range(n) if cap[r] - kv[r] >= ps and r != src]
            if not room:
                break
            dst = min(room)[1]
            want = min(budget, (kv[src] - kv[dst]) // 2, cap[dst] - kv[dst]) // ps * ps
            if want < ps:
                break
            pick = self._pick_range(src, dst, want)
            if pick is None:
                break
            rid, start, end = pick
            before = self._current_step_us()
            m = self._move(rid, src, dst, start, end)
            if before is not None and self._current_step_us() >= before:
                self._move(rid, dst, src, start, end)  # no gain once exchange is paid: undo
                break
            moves.append(m)
            budget -= end - start
        return moves

    def _rejoin(self, budget: int) -> list[Migration]:
        """``rejoin``: bring a split request's guest shards home when its home now has room and
        that lowers the predicted step (``predicted_step_us``: with the bucketed wire, the last
        split's fixed exchange and wire, or a smaller bucket, against the attention it puts back
        on the home). O(split requests) per call, smallest moves first; at most ``budget``
        tokens."""
        if not self.num_guest_items or getattr(self, "step_slo_us", None) is None:
            return []
        recs, home_of = self._recs, {}
        for g in range(self.num_ranks):
            for rid in self._hosted[g]:
                home_of[rid] = recs[rid]
        split = sorted(home_of.values(), key=lambda r: (sum(
            e - s for g, s, e in r.sealed if g != r.home), r.rid))
        moves: list[Migration] = []
        for rec in split:
            away = [(g, s, e) for g, s, e in rec.sealed if g != rec.home]
            size = sum(e - s for _, s, e in away)
            if size > budget or self.cap[rec.home] - self.kv[rec.home] < size:
                continue
            before = self.predicted_step_us()
            done = [self._move(rec.rid, g, rec.home, s, e) for g, s, e in reversed(away)]
            if self.predicted_step_us() < before:
                moves += done
                budget -= size
            else:
                for m in reversed(done):
                    self._move(m.rid, m.dst, m.src, m.start, m.end)
            if not self.num_guest_items:
                break
        return moves

    def undo(self, m: Migration) -> None:
        """Take back a move ``rebalance`` booked (the caller could not carry it out)."""
        self._move(m.rid, m.dst, m.src, m.start, m.end)

    def is_split(self, rid: str) -> bool:
        """Whether ``rid`` holds sealed KV on a rank other than its home now."""
        rec = self._recs.get(rid)
        return rec is not None and bool(rec.guests)

    def _current_step_us(self) -> float | None:
        """With a step budget (``dcp`` ``step_slo_ms``) a move must lower the predicted step
        (slowest rank + the fixed exchange cost); without one, ``None``: balance KV alone."""
        if getattr(self, "step_slo_us", None) is None:
            return None
        fixed = self.profile.exchange_us_fixed if self.num_guest_items else 0.0
        return max(self.cost) + fixed + self.wire_now_us()

    def _pick_range(self, src: int, dst: int, want: int):
        """The largest movable range on ``src`` (ties: one that rejoins its home, then first)."""
        ps, ms = self.page, self.min_shard_tokens
        best, best_key = None, None

        def consider(rec, s, e, from_tail):
            nonlocal best, best_key
            held = dst == rec.home or dst in rec.guests
            m = min(e - s, want) // ps * ps
            if m < ps or (not held and m < ms):
                return
            if not held and len(rec.guests) + 1 >= self.max_degree:
                return
            if from_tail:
                rng = (s, s + m)
            else:
                left = e - s - m
                if src != rec.home and 0 < left < ms:  # do not leave a sliver behind
                    m = (e - s - ms) // ps * ps
                    if m < ps or (not held and m < ms):
                        return
                rng = (e - m, e)
            key = (m, dst == rec.home)
            if best_key is None or key > best_key:
                best, best_key = (rec.rid, *rng), key

        recs = self._recs
        for rid in self._hosted[src]:
            rec = recs[rid]
            for r, s, e in rec.sealed:
                if r == src:
                    consider(rec, s, e, False)
        for rid in self._homed[src]:
            rec = recs[rid]
            sealed_end = rec.length // ps * ps
            if sealed_end > rec.tail_start:
                consider(rec, rec.tail_start, sealed_end, True)
        return best
