"""Per-pair guest counts of a ledger policy: ``pairs[h][g]`` requests homed on ``h`` with a sealed
shard on ``g`` (the queries ``h`` sends ``g`` every decode step). Their maximum is what sets the
server exchange's bucket (``exchange.wire.bucket_for``: every rank ships that many rows to every
peer), kept in O(1) per change with a histogram of the counts; and how many pairs with a count
cross nodes (a step with none exchanges within each node: ``wire.scope_peers``)."""

from __future__ import annotations


class PairCounts:
    """Mixin of ``state.LedgerPolicy`` (whose ``_count_guests`` calls ``_count_pair``)."""

    def _init_pairs(self, n: int) -> None:
        self.pairs = [[0] * n for _ in range(n)]
        self._pair_hist: dict[int, int] = {}  # count -> pairs with that count (> 0)
        self._busiest = 0
        self._far_pairs = 0  # pairs with a count whose ranks are on different nodes

    def _count_pair(self, home: int, g: int, sign: int) -> None:
        hist = self._pair_hist
        old = self.pairs[home][g]
        new = self.pairs[home][g] = old + sign
        if old:
            hist[old] -= 1
        if new:
            hist[new] = hist.get(new, 0) + 1
        if bool(old) != bool(new) and not self.cluster.same_node(home, g):
            self._far_pairs += 1 if new else -1
        if new > self._busiest:
            self._busiest = new
        while self._busiest and not hist.get(self._busiest):
            self._busiest -= 1

    def busiest_pair(self) -> int:
        """The most queries one home sends one rank per step (0: nothing is split)."""
        return self._busiest

    def cross_pairs(self) -> bool:
        """Some home sends queries to a rank on another node (the step exchanges across nodes)."""
        return self._far_pairs > 0
