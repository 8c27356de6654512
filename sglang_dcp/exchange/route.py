"""Route plans: which queries each rank sends where, which guest items it serves, what it merges.

Pure Python (no torch). Every rank builds its own ``RankRoute`` from the step's placements (the
same on every rank) and its own KV slot map, so no metadata travels between ranks. Only numbers
every rank can derive from the placements alone (``max_pair_items``, hence the round count and
the per-peer capacity bucket) may decide the shape of a collective.

Attention items are one per (request, rank holding KV of it): a rank holding two shards of the
same request serves them as one item (attention over a set of KV tokens does not care about their
order). Layout on rank ``r`` for one round::

    items:  [ home rows (local KV) | from peer 0 | from peer 1 | ... ]   (padded to capacity)
    send[p]  = home rows whose query goes to p      (p's recv[r] lists the same requests)
    recv[p]  = guest items from p, in p's send order
    merge[i] = parts of home row i in shard token order: (rank that computed it, index)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from sglang_dcp.types import Placement


@dataclass(frozen=True, slots=True)
class GuestItem:
    """A query of request ``rid`` (homed on ``src``) served over this rank's KV ``slots``."""

    rid: str
    src: int
    slots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MergePart:
    """One partial (o, lse) of a home request.

    ``rank == home``: the local item, ``index`` is the home row. Otherwise ``index`` is the
    position of the request in ``send[rank]`` (the peer returns its outputs in that order).
    """

    rank: int
    index: int


@dataclass(frozen=True, slots=True)
class RankRoute:
    """Everything rank ``rank`` does in one exchange round."""

    rank: int
    num_ranks: int
    home_rids: tuple[str, ...]  # batch order
    local_slots: tuple[tuple[int, ...], ...]  # per home row: its KV slots on this rank
    send: tuple[tuple[int, ...], ...]  # per peer: home rows whose query goes there
    recv: tuple[tuple[GuestItem, ...], ...]  # per peer: guest items it sends here
    merge: tuple[tuple[MergePart, ...], ...]  # per home row, shard token order
    has_local: bool = True  # False in rounds after the first: local items already ran

    @property
    def batch_size(self) -> int:
        return len(self.home_rids)

    @property
    def max_send(self) -> int:
        return max((len(s) for s in self.send), default=0)

    @property
    def max_recv(self) -> int:
        return max((len(r) for r in self.recv), default=0)

    @property
    def num_guest_items(self) -> int:
        return sum(len(r) for r in self.recv)

    @property
    def num_kv_slots(self) -> int:
        local = sum(len(s) for s in self.local_slots) if self.has_local else 0
        return local + sum(len(g.slots) for r in self.recv for g in r)


def _check(p: Placement, num_ranks: int) -> None:
    pos = 0
    for s in p.shards:
        if s.start != pos or s.end < s.start:
            raise ValueError(
                f"placement of {p.rid!r}: shards must tile [0, length) in token order, got "
                f"{[(s.rank, s.start, s.end) for s in p.shards]}"
            )
        if not 0 <= s.rank < num_ranks:
            raise ValueError(f"placement of {p.rid!r}: rank {s.rank} outside [0, {num_ranks})")
        pos = s.end


def part_ranks(p: Placement) -> tuple[int, ...]:
    """Ranks that compute a part of ``p``, in shard token order; the home always, peers only
    where they hold at least one token."""
    seen: dict[int, None] = {}
    for s in p.shards:
        if s.rank not in seen and (s.num_tokens > 0 or s.rank == p.home_rank):
            seen[s.rank] = None
    return tuple(seen)


def tokens_on(p: Placement, rank: int) -> int:
    return sum(s.num_tokens for s in p.shards if s.rank == rank)


def crosses_nodes(placements: Sequence[Placement], ranks_per_node: int,
                  parts: Mapping[str, tuple[int, ...]] | None = None) -> bool:  # fmt: skip
    """Some placement has a part off its home's node (the step's exchange spans every rank;
    else it runs within each node: ``wire.scope_peers``). The same on every rank."""
    for p in placements:
        node = p.home_rank // ranks_per_node
        if any(r // ranks_per_node != node
               for r in (parts[p.rid] if parts is not None else part_ranks(p))):  # fmt: skip
            return True
    return False


def check_scope(route: RankRoute, peers: Sequence[int] | None) -> tuple[int, ...] | None:
    """``peers`` as a tuple (a node-scoped step's ranks; ``None``: every rank), after checking
    that ``route`` has no item with a rank outside them (that item would never be shipped)."""
    if peers is None:
        return None
    outside = [p for p in range(route.num_ranks) if (route.send[p] or route.recv[p])
               and p not in peers]  # fmt: skip
    if outside:
        raise ValueError(f"rank {route.rank}: a node-scoped step (peers {tuple(peers)}) has "
                         f"items with ranks {outside}")
    return tuple(peers)


def max_pair_items(
    placements: Sequence[Placement],
    num_ranks: int,
    parts: Mapping[str, tuple[int, ...]] | None = None,
) -> int:
    """The largest number of queries any home sends to any one peer (the same on every rank).
    ``parts``: ``part_ranks`` of each placement by rid, when the caller has them."""
    count = [[0] * num_ranks for _ in range(num_ranks)]
    for p in placements:
        for r in parts[p.rid] if parts is not None else part_ranks(p):
            if r != p.home_rank:
                count[p.home_rank][r] += 1
    return max((c for row in count for c in row), default=0)


def num_rounds(
    placements: Sequence[Placement],
    num_ranks: int,
    capacity: int,
    parts: Mapping[str, tuple[int, ...]] | None = None,
) -> int:
    """Exchange rounds a step needs when each peer can take ``capacity`` queries per round."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return max(1, -(-max_pair_items(placements, num_ranks, parts) // capacity))


def build_rank_route(
    placements: Sequence[Placement],
    *,
    rank: int,
    num_ranks: int,
    local_slots: Mapping[str, Sequence[int]],
    parts: Mapping[str, tuple[int, ...]] | None = None,
) -> RankRoute:
    """Route of ``rank`` for one step.

    ``local_slots[rid]``: this rank's KV slots of ``rid`` in token order (all its shards here
    concatenated): a sequence of ints, or any sized container (a device tensor, an
    ``exchange.static.Slots``) kept as is; needed for every request with KV on this rank, extra
    keys are ignored.
    """
    seen: set[str] = set()
    for p in placements:
        if p.rid in seen:
            raise ValueError(f"request {p.rid!r} placed twice in one step")
        seen.add(p.rid)
        _check(p, num_ranks)
    if parts is None:
        parts = {p.rid: part_ranks(p) for p in placements}

    def slots_of(p: Placement) -> tuple[int, ...]:
        want = tokens_on(p, rank)
        got = local_slots.get(p.rid)
        if got is None:
            if want == 0:
                return ()
            raise ValueError(f"rank {rank} holds {want} tokens of {p.rid!r} but has no slot map")
        if len(got) != want:
            raise ValueError(
                f"rank {rank}: slot map of {p.rid!r} has {len(got)} slots, placement puts "
                f"{want} tokens here"
            )
        return tuple(got) if isinstance(got, list) else got  # tuples, tensors, Slots as they are

    homes = [p for p in placements if p.home_rank == rank]
    send: list[list[int]] = [[] for _ in range(num_ranks)]
    merge: list[tuple[MergePart, ...]] = []
    for row, p in enumerate(homes):
        mparts = []
        for r in parts[p.rid]:
            if r == rank:
                mparts.append(MergePart(rank, row))
            else:
                mparts.append(MergePart(r, len(send[r])))
                send[r].append(row)
        merge.append(tuple(mparts))

    recv: list[list[GuestItem]] = [[] for _ in range(num_ranks)]
    for p in placements:
        if p.home_rank != rank and rank in parts[p.rid]:
            recv[p.home_rank].append(GuestItem(p.rid, p.home_rank, slots_of(p)))

    return RankRoute(
        rank=rank,
        num_ranks=num_ranks,
        home_rids=tuple(p.rid for p in homes),
        local_slots=tuple(slots_of(p) for p in homes),
        send=tuple(tuple(s) for s in send),
        recv=tuple(tuple(r) for r in recv),
        merge=tuple(merge),
    )


def build_routes(
    placements: Sequence[Placement],
    *,
    num_ranks: int,
    slots: Sequence[Mapping[str, Sequence[int]]],
) -> tuple[RankRoute, ...]:
    """Routes of every rank (tests and the simulator); ``slots[r]`` is rank r's slot map."""
    if len(slots) != num_ranks:
        raise ValueError(f"{len(slots)} slot maps for {num_ranks} ranks")
    return tuple(
        build_rank_route(placements, rank=r, num_ranks=num_ranks, local_slots=slots[r])
        for r in range(num_ranks)
    )


def split_rounds(route: RankRoute, *, capacity: int, rounds: int) -> tuple[RankRoute, ...]:
    """Cut a route into ``rounds`` rounds of at most ``capacity`` queries per peer.

    ``rounds`` must be the global count (``num_rounds``): every rank runs every round, since each
    round is a collective. Local items run in round 0 only; each home row gets, per round, the
    parts that arrive in that round (possibly none).
    """
    if rounds * capacity < max(route.max_send, route.max_recv):
        raise ValueError(
            f"rank {route.rank}: {rounds} rounds of capacity {capacity} cannot carry "
            f"{max(route.max_send, route.max_recv)} queries to one peer"
        )
    if rounds == 1:
        return (route,)
    out = []
    for k in range(rounds):
        lo, hi = k * capacity, (k + 1) * capacity
        merge = tuple(
            tuple(
                MergePart(m.rank, m.index - lo if m.rank != route.rank else m.index)
                for m in parts
                if (k == 0 if m.rank == route.rank else lo <= m.index < hi)
            )
            for parts in route.merge
        )
        out.append(
            replace(
                route,
                send=tuple(s[lo:hi] for s in route.send),
                recv=tuple(r[lo:hi] for r in route.recv),
                merge=merge,
                has_local=k == 0,
            )
        )
    return tuple(out)
