"""Per-rank prefix caches of the simulator (issue 26 item 5): what finished turns leave behind.

Pure Python. Each rank keeps *pieces* ``session -> [start, end)``: token range ``[start, end)``
of a session's context, in least-recently-used order. A piece's KV depends on every token before
``start`` too, so it serves only a prompt that extends the same session (the simulator's stand-in
for a hash chain of the full prefix, ``Workload.parent``).

- **Store**: when a turn finishes, each rank holding a range of its KV keeps the written part of
  that range as a piece (the most recently used); an older piece of the same session on that rank
  is replaced. For a request placed whole (every SGLang baseline; ``dcp`` when unsplit) that is
  one piece ``[0, length)`` on its rank: SGLang's radix tree inserting the finished request.
  For a split ``dcp`` request, one piece per holder: the sharded cache.
- **Hit**: a new turn placed with shards ``(rank, start, end)`` reuses the tokens of each shard
  that a piece of its session on the *same rank* covers; the rest is prefilled. A piece used is
  taken out of the cache: the turn's own reservation now holds those tokens (SGLang locks the
  tree node; the memory is the same).
- **Memory**: pieces live in a rank's *free* KV (capacity less the planner's reservations):
  cached KV is evictable, so it never makes the planner refuse or wait. Whenever a rank's pieces
  exceed its free KV, the least recently used piece loses tokens from its end until they fit
  (a radix tree evicts leaves first: a context loses its tail, never its head).

Not modelled: sharing between sessions (system prompts; TraceLab's figures are per session),
page granularity of pieces, and the radix tree's node splits (a piece is one node).
"""

from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    """Cached pieces per rank: ``pieces[r]`` maps session -> ``[start, end]`` (tokens), LRU first.
    """

    def __init__(self, num_ranks: int) -> None:
        self.pieces: list[OrderedDict[int, list[int]]] = [OrderedDict() for _ in range(num_ranks)]
        self.size = [0] * num_ranks  # cached tokens per rank
        self.layout: dict[int, tuple] = {}  # session -> (home, sealed, tail_start) last stored
        self.evicted = 0  # tokens evicted, all ranks

    def store(self, session: int, shards, length: int, home: int, sealed, tail_start: int) -> None:
        """A turn of ``session`` finished holding ``shards`` (``(rank, start, end)``, the last one
        open-ended) with ``length`` tokens written; ``home``, ``sealed`` (``[rank, start, end]``
        ranges) and ``tail_start`` describe its layout for the next turn."""
        last = len(shards) - 1
        for k, (r, s, e) in enumerate(shards):
            end = length if k == last else min(e, length)
            if end <= s:
                continue
            old = self.pieces[r].pop(session, None)
            if old is not None:
                self.size[r] -= old[1] - old[0]
            self.pieces[r][session] = [s, end]
            self.size[r] += end - s
        self.layout[session] = (home, [list(x) for x in sealed], tail_start)

    def hit(self, session: int, shards, prompt_len: int) -> int:
        """Tokens of a ``prompt_len`` prompt placed on ``shards`` that its session's pieces hold
        on the same ranks (the tokens it need not prefill)."""
        got = 0
        for r, s, e in shards:
            p = self.pieces[r].get(session)
            if p is not None:
                got += max(0, min(e, p[1], prompt_len) - max(s, p[0]))
        return got

    def take(self, session: int, shards) -> None:
        """The turn placed on ``shards`` owns its session's pieces on those ranks now."""
        for r, _, _ in shards:
            p = self.pieces[r].pop(session, None)
            if p is not None:
                self.size[r] -= p[1] - p[0]

    def cached_layout(self, session: int):
        """``(home, sealed, tail_start)`` of the session's last stored turn if a piece of it is
        still cached somewhere, else ``None``."""
        lay = self.layout.get(session)
        if lay is None:
            return None
        ranks = {lay[0], *(r for r, _, _ in lay[1])}
        return lay if any(session in self.pieces[r] for r in ranks) else None

    def fit(self, free) -> int:
        """Evict least-recently-used tokens until every rank's pieces fit its ``free`` KV
        (tokens, per rank). Returns the tokens evicted."""
        gone = 0
        for r, cap in enumerate(free):
            over = self.size[r] - max(0, int(cap))
            pieces = self.pieces[r]
            while over > 0 and pieces:
                sess, p = next(iter(pieces.items()))
                cut = min(over, p[1] - p[0])
                p[1] -= cut
                over -= cut
                self.size[r] -= cut
                gone += cut
                if p[1] <= p[0]:
                    del pieces[sess]
        self.evicted += gone
        return gone

    def forget(self, session: int) -> None:
        """The session ended: its pieces stay until evicted (another session never uses them),
        but its layout is dropped."""
        self.layout.pop(session, None)
