"""Random decode scenarios for the exchange self-check. Pure Python, seeded, no torch.

A scenario is a list of steps; each step has the requests that arrive (placement at admission:
prompt only), finish and migrate before it, and the placements of every live request during it
(the tail includes the token decoded in that step). Coverage, on purpose: a request on every
rank; the last rank is never a home (it holds only guest shards); homes that also hold sealed
shards; tails that start empty; arrivals and finishes; one sealed-shard migration mid-run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sglang_dcp.planner.base import Migration
from sglang_dcp.types import Placement, Shard


@dataclass(frozen=True, slots=True)
class ScenarioStep:
    t: int
    arrivals: tuple[Placement, ...]
    finishes: tuple[str, ...]
    migrations: tuple[Migration, ...]
    placements: tuple[Placement, ...]


def sealed_shards(
    rng: random.Random, home: int, degree: int, *, W: int, page: int, max_pages: int
) -> tuple[list[Shard], int]:
    """Random sealed shards of a new request on ``degree - 1`` peers (sometimes one more on its
    home), whole pages each, in token order; returns them and the first token after them."""
    others = rng.sample([r for r in range(W) if r != home], degree - 1)
    sealed = others + ([home] if rng.random() < 0.3 else [])
    rng.shuffle(sealed)
    shards, pos = [], 0
    for r in sealed:
        n = page * rng.randint(1, max_pages)
        shards.append(Shard(r, pos, pos + n))
        pos += n
    return shards, pos


def _new(
    rng: random.Random, rid: str, home: int, degree: int, *, W: int, page: int, max_pages: int
) -> Placement:
    shards, pos = sealed_shards(rng, home, degree, W=W, page=page, max_pages=max_pages)
    tail = rng.choice([0, rng.randint(1, 2 * page)])
    shards.append(Shard(home, pos, pos + tail))
    return Placement(rid, home, tuple(shards))


def _grow(p: Placement, n: int) -> Placement:
    last = p.shards[-1]
    tail = Shard(last.rank, last.start, last.end + n)
    return Placement(p.rid, p.home_rank, p.shards[:-1] + (tail,))


def make_scenario(
    num_ranks: int, steps: int, seed: int, *, page_size: int = 4, max_pages: int = 4
) -> list[ScenarioStep]:
    W, rng = num_ranks, random.Random(seed)
    homes = list(range(max(1, W - 1)))  # rank W-1 is never a home when W > 1
    live: dict[str, Placement] = {}
    count = 0

    def arrive(home: int, degree: int) -> Placement:
        nonlocal count
        p = _new(rng, f"r{count}", home, degree, W=W, page=page_size, max_pages=max_pages)
        count += 1
        return p

    out = []
    for t in range(steps):
        arrivals: list[Placement] = []
        finishes: list[str] = []
        migrations: list[Migration] = []
        if t == 0:
            arrivals.append(arrive(0, W))  # a request on every rank
            for _ in range(W + 1):
                arrivals.append(arrive(rng.choice(homes), rng.randint(1, W)))
        else:
            if rng.random() < 0.4 and len(live) > 2:
                finishes.append(rng.choice(sorted(r for r in live if r != "r0")))
            if rng.random() < 0.5:
                arrivals.append(arrive(rng.choice(homes), rng.randint(1, W)))
        for rid in finishes:
            del live[rid]
        for p in arrivals:
            live[p.rid] = p
        if t == steps // 2 and W > 1:
            cands = [
                (p, i) for p in live.values() for i, s in enumerate(p.shards[:-1]) if s.num_tokens
            ]
            p, i = rng.choice(sorted(cands, key=lambda c: (c[0].rid, c[1])))
            s = p.shards[i]
            dst = rng.choice([r for r in range(W) if r != s.rank])
            migrations.append(Migration(p.rid, s.rank, dst, s.start, s.end))
            shards = list(p.shards)
            shards[i] = Shard(dst, s.start, s.end)
            live[p.rid] = Placement(p.rid, p.home_rank, tuple(shards))
        for rid in live:
            live[rid] = _grow(live[rid], 1)
        out.append(
            ScenarioStep(
                t, tuple(arrivals), tuple(finishes), tuple(migrations), tuple(live.values())
            )
        )
    return out
