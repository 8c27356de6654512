"""What the exchange costs a decode step, as the server ships it (pure Python).

Three models of a rank's exchange time (``EXCHANGE_WIRES``):

- ``items``: each rank pays the profile's per-item rate for its own guest items, in and out
  (``CostProfile.exchange_us``): what an exchange that ships only the items would cost.
- ``bucketed``: the server's exchange before scopes. Its all-to-alls have equal splits
  (captured CUDA graphs freeze them), so in a step whose busiest home -> holder pair carries
  ``B`` queries, every rank sends every peer one bucket (``exchange.wire.bucket_for(B)``, a
  power of two) per round and gets as many result rows back, whatever its own items:
  ``exchange.wire.padded_items`` rows each way, the same on every rank. ``bucketed_exchange_us``
  prices them at the profile's per-item rates; the peers on a rank's node (the smallest
  node's, where ``ranks_per_node`` does not divide the ranks) at the intranode rate. The merge
  of remote partials stays per real part.
- ``scoped`` (the default of the planner and the simulator: what the server ships now): the
  same buckets, and a step in which no split request has a shard off its home's node
  exchanges within each node only (``exchange.wire.scope_peers``): every rank ships its node's
  other ranks one bucket, all at the intranode rate. One pair across nodes puts the step back
  on the ``all`` scope (``bucketed``'s rows).

``BucketedWire`` (mixed into ``DcpPolicy``) makes the planner predict with the same function:
the wire term is cluster-wide, set by the busiest pair and, scoped, by whether any pair crosses
nodes (``pairs.PairCounts``), so a guest on a pair that stays within the current bucket and
scope adds no exchange, and one that outgrows either adds the difference to every rank.
"""

from __future__ import annotations

from sglang_dcp.exchange.wire import DEFAULT_CAPACITY, padded_items, scope_peers

EXCHANGE_WIRES = ("items", "bucketed", "scoped")
DEFAULT_WIRE = "scoped"


def near_peers(num_ranks: int, ranks_per_node: int) -> int:
    """Peers on a rank's own node, for the rank on the smallest node (the slowest exchange)."""
    return min(min(ranks_per_node, num_ranks - i) for i in range(0, num_ranks, ranks_per_node)) - 1


def bucketed_exchange_us(profile, num_ranks: int, busiest_pair: int, *, ranks_per_node: int = 8,
                         capacity: int = DEFAULT_CAPACITY, cross: bool = True) -> float:
    """One rank's exchange time (µs per step, all layers) when the busiest pair carries
    ``busiest_pair`` queries: ``padded_items`` rows out and as many back (0: no exchange).
    ``cross`` false: a node-scoped step (``scope_peers``), every peer on the rank's node."""
    peers = scope_peers(num_ranks, ranks_per_node, cross=cross)
    rows = padded_items(num_ranks, busiest_pair, capacity, peers=peers)
    if not rows:
        return 0.0
    if peers < num_ranks - 1:
        near = 2 * rows
    else:
        near = 2 * rows * near_peers(num_ranks, ranks_per_node) // (num_ranks - 1)
    return profile.exchange_us(rows, rows, near)


class BucketedWire:
    """Mixin of ``dcp.DcpPolicy`` (which provides ``profile``, ``cluster``, ``pairs``,
    ``busiest_pair()`` and ``cross_pairs()``). With ``exchange_wire="items"`` every method here
    returns 0 and the per-item terms stay in the per-rank costs (the model before buckets). A
    wire *state* is ``(busiest pair, crosses nodes)``; unscoped wires always cross."""

    def _wire_options(self, exchange_wire: str, wire_capacity: int) -> None:
        if exchange_wire not in EXCHANGE_WIRES:
            raise ValueError(f"dcp: exchange_wire must be one of {EXCHANGE_WIRES}, "
                             f"got {exchange_wire!r}")
        if wire_capacity < 1:
            raise ValueError(f"dcp: wire_capacity must be >= 1, got {wire_capacity}")
        self.exchange_wire = exchange_wire
        self.bucketed = exchange_wire != "items"
        self.scoped = exchange_wire == "scoped"
        self.wire_capacity = int(wire_capacity)
        self._wire_memo: dict[tuple[int, bool], float] = {}

    def wire_us(self, busiest: int, cross: bool = True) -> float:
        """Each rank's bucketed exchange (µs) at busiest pair ``busiest``, across nodes or (scoped,
        ``cross`` false) within them; 0 under ``items``."""
        if not self.bucketed or not busiest:
            return 0.0
        key = (busiest, cross or not self.scoped)
        got = self._wire_memo.get(key)
        if got is None:
            got = self._wire_memo[key] = bucketed_exchange_us(
                self.profile, self.num_ranks, busiest, ranks_per_node=self.cluster.ranks_per_node,
                capacity=self.wire_capacity, cross=key[1])
        return got

    def wire_state(self) -> tuple[int, bool]:
        """The exchange now: (busiest pair, whether a pair crosses nodes)."""
        return self.busiest_pair(), self.cross_pairs()

    def wire_now_us(self) -> float:
        return self.wire_us(*self.wire_state())

    def _busiest_with(self, home: int, guests) -> tuple[int, bool]:
        """The wire state once a request homed on ``home`` adds one query to each guest."""
        row, (b, cross) = self.pairs[home], self.wire_state()
        same = self.cluster.same_node
        for g in guests:
            if g != home:
                if row[g] + 1 > b:
                    b = row[g] + 1
                cross = cross or not same(g, home)
        return b, cross

    def _guest_ex_us(self, home: int, g: int) -> float:
        """What a guest on ``g`` of a request homed on ``home`` adds to the exchange (µs).
        Bucketed: every rank's extra wire, 0 while the pair stays within the current bucket
        (and, scoped, its node). Per item: the item's own exchange on each of its two ranks."""
        if not self.bucketed:
            return self.profile.item_exchange_us(self.cluster.same_node(g, home))
        b, cross = self.wire_state()
        n = max(b, self.pairs[home][g] + 1)
        c = cross or not self.cluster.same_node(g, home)
        return self.wire_us(n, c) - self.wire_us(b, cross) if (n, c) != (b, cross) else 0.0
