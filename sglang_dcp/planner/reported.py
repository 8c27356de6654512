"""The planner's books follow what the ranks report: where a request's sealed KV really is.

A placement is a plan. The server carries it out at the request's first decode step (its home
ships the sealed shards), and a shard move can fail, leaving that range on the home. The ranks
then report each split request's actual sealed ranges, and ``restate`` makes them the books'
truth, so that free KV, guest items and step-time predictions match what the allocators hold.

Mixed into ``state.LedgerPolicy`` (every policy); it changes KV only through the same per-rank
aggregates ``LedgerPolicy`` keeps, so ``verify()`` still recomputes them exactly. Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence


class ReportedRanges:
    # set once ``restate`` changed the books: a rank may then hold more than its planner budget
    # (a failed move keeps its range on the home, whose allocator really holds it)
    restated: bool = False

    def restate(self, rid: str, sealed: Sequence[Sequence[int]]) -> bool:
        """The ranks hold ``rid``'s sealed KV as ``sealed``: ``(rank, start, end)`` in token
        order, covering ``[0, T)`` where ``T`` is where its home's tail began when the ranks
        shipped it. Tokens ``[T, length)`` stay the home's tail; a run of home ranges that ends
        at ``T`` joins the tail. Returns whether the books changed; a rid the planner no
        longer holds (it finished meanwhile) changes nothing.

        Raises ``ValueError`` (books unchanged) for ranges that do not tile ``[0, T)`` in
        page-aligned pieces on valid ranks, or that reach past the request's KV.
        """
        rec = self._recs.get(rid)
        if rec is None:
            return False
        home, ps = rec.home, self.page
        pieces: list[list[int]] = []
        pos = 0
        for r, s, e in sealed:
            if s != pos or e <= s or s % ps or e % ps or not 0 <= r < self.num_ranks:
                raise ValueError(
                    f"reported ranges of {rid!r} must tile [0, T) in {ps}-token pages on ranks "
                    f"0..{self.num_ranks - 1}; got {[list(x) for x in sealed]}"
                )
            if pieces and pieces[-1][0] == r:
                pieces[-1][2] = e
            else:
                pieces.append([r, s, e])
            pos = e
        if pos > rec.length:
            raise ValueError(
                f"reported ranges of {rid!r} end at token {pos}, past its {rec.length} KV tokens"
            )
        tail_start = pos
        if pieces and pieces[-1][0] == home:
            tail_start = pieces.pop()[1]
        if pieces == rec.sealed and tail_start == rec.tail_start:
            return False
        before = self._held(rec.sealed, rec.tail_start, rec)
        after = self._held(pieces, tail_start, rec)
        self._drop_guests(rec)
        old_guests = rec.guests
        rec.sealed, rec.tail_start = pieces, tail_start
        rec.guests = tuple(dict.fromkeys(p[0] for p in pieces if p[0] != home))
        self._add_guests(rec)
        for r in set(before) | set(after):
            kv0, used0 = before.get(r, (0, 0))
            kv1, used1 = after.get(r, (0, 0))
            self.kv[r] += kv1 - kv0
            self.used[r] += used1 - used0
        self.restated = True
        for r in {home, *old_guests, *rec.guests, *before, *after}:
            self._touched(r)
        return True

    @staticmethod
    def _held(sealed, tail_start: int, rec) -> dict[int, tuple[int, int]]:
        """rank -> (reserved, written) KV tokens of one request laid out as given."""
        out: dict[int, tuple[int, int]] = {}
        for r, s, e in sealed:
            kv, used = out.get(r, (0, 0))
            out[r] = (kv + e - s, used + e - s)
        kv, used = out.get(rec.home, (0, 0))
        out[rec.home] = (kv + rec.resv_end - tail_start, used + rec.length - tail_start)
        return out

    def guest_kv_tokens(self) -> list[int]:
        """Per rank: sealed KV tokens it holds for requests homed on other ranks (what the
        rank counts as its guest KV). O(live requests)."""
        out = [0] * self.num_ranks
        for rec in self._recs.values():
            for r, s, e in rec.sealed:
                if r != rec.home:
                    out[r] += e - s
        return out
