"""Random prefill-into-shards scenarios for the extend-mode self-check. Pure Python, seeded.

Each request has a final placement (sealed, page-aligned shards on other ranks and sometimes on
its home, then the home's tail) covering its prompt and the tokens it decodes. Its prompt is
prefilled in chunks of ``chunk_pages`` pages, one chunk per step; after each step the chunk's
tokens that belong to another rank leave the home (``ships``), so the next chunk finds
``[0, start)`` where the placement says. Then it decodes ``decode_steps`` one-row chunks and
finishes. Arrivals are staggered, so steps mix chunks of several requests with decode rows.

Coverage, on purpose: a request on every rank; the last rank is never a home (it holds only
shards); homes that also hold sealed shards; chunks that straddle shard boundaries; a prompt
that ends on a shard boundary (empty prompt tail); a request with no shard elsewhere (d = 1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sglang_dcp.exchange.extend import Chunk
from sglang_dcp.exchange.scenario import sealed_shards
from sglang_dcp.planner.base import Migration
from sglang_dcp.types import Placement, Shard


@dataclass(frozen=True, slots=True)
class ExtendRequest:
    placement: Placement  # final: prompt + decoded tokens
    prompt_len: int
    arrival: int  # the step of its first chunk

    @property
    def length(self) -> int:
        return self.placement.shards[-1].end


@dataclass(frozen=True, slots=True)
class ExtendStep:
    t: int
    chunks: tuple[Chunk, ...]
    ships: tuple[Migration, ...]  # after the step: chunk tokens that belong to other ranks
    finishes: tuple[str, ...]  # after the ships: every rank frees these requests


def _request(rng, rid, home, degree, *, W, page, max_pages, decode, empty_tail=False):
    shards, pos = sealed_shards(rng, home, degree, W=W, page=page, max_pages=max_pages)
    prompt_tail = 0 if empty_tail and pos else rng.randint(1, 2 * page)
    shards.append(Shard(home, pos, pos + prompt_tail + decode))
    return Placement(rid, home, tuple(shards)), pos + prompt_tail


def ships_of(chunk: Chunk) -> list[Migration]:
    """The chunk's tokens whose placement is another rank than its home (page-aligned)."""
    p, out = chunk.placement, []
    for s in p.shards:
        a, b = max(s.start, chunk.start), min(s.end, chunk.end)
        if s.rank != p.home_rank and a < b:
            out.append(Migration(p.rid, p.home_rank, s.rank, a, b))
    return out


def make_extend_scenario(
    num_ranks: int,
    seed: int,
    *,
    num_requests: int = 0,
    page_size: int = 4,
    chunk_pages: int = 2,
    max_pages: int = 3,
    decode_steps: int = 2,
) -> tuple[list[ExtendRequest], list[ExtendStep]]:
    """(requests, steps); ``num_requests`` 0: ``num_ranks + 2``."""
    W, rng = num_ranks, random.Random(seed)
    homes = list(range(max(1, W - 1)))
    n = num_requests or W + 2
    kw = dict(W=W, page=page_size, max_pages=max_pages, decode=decode_steps)
    reqs: list[ExtendRequest] = []
    for i in range(n):
        if i == 0:
            home, degree = 0, W  # a request on every rank
        elif i == 1:
            home, degree = rng.choice(homes), 1
        else:
            home, degree = rng.choice(homes), rng.randint(1, W)
        p, prompt = _request(rng, f"r{i}", home, degree, empty_tail=i == 2, **kw)
        reqs.append(ExtendRequest(p, prompt, arrival=rng.randint(0, i)))

    C = chunk_pages * page_size
    per_step: dict[int, list[Chunk]] = {}
    last: dict[str, int] = {}
    for r in reqs:
        bounds = list(range(0, r.prompt_len, C)) + [r.prompt_len]
        spans = list(zip(bounds, bounds[1:])) + [
            (t, t + 1) for t in range(r.prompt_len, r.length)
        ]
        for j, (a, b) in enumerate(spans):
            per_step.setdefault(r.arrival + j, []).append(Chunk(r.placement, a, b))
        last[r.placement.rid] = r.arrival + len(spans) - 1
    steps = []
    for t in range(max(per_step) + 1):
        chunks = tuple(per_step.get(t, ()))
        ships = tuple(m for c in chunks for m in ships_of(c))
        finishes = tuple(rid for rid, k in last.items() if k == t)
        steps.append(ExtendStep(t, chunks, ships, finishes))
    return reqs, steps
