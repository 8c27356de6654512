"""Types shared by the planner, the exchange and the simulator. Pure Python, no torch.

A request's KV is a token range ``[0, length)`` cut into page-aligned *shards*, each held by one
rank. The last shard (the *tail*) lives on the request's *home rank*: decode appends there, so no
KV moves per step. Earlier shards are *sealed* (full, immutable) and may live anywhere.

::

    request r, home rank 2, degree 3, page 16

    token:   0            1024          2048                length (grows)
             |-- shard 0 --|-- shard 1 --|----- tail shard -----|~~~> decode appends
    rank:          0             3                 2 (home)

    per layer, per decode step:
      home 2 --q--> ranks 0, 3         (guest items: query row + that rank's KV slots)
      ranks 0, 2, 3 compute (o_part, lse_part) over the KV they hold
      ranks 0, 3 --(o_part, lse_part)--> home 2; home merges the parts in shard order

Token ranges are half open. Every token of a request belongs to exactly one shard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """What the planner knows of a request when it arrives (after prefill, in PD disaggregation).

    ``prompt_len`` tokens are in the KV at admission; ``max_new_tokens`` bounds the decode tail
    (use the expected output length where one is known).
    """

    rid: str
    prompt_len: int
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.prompt_len < 0 or self.max_new_tokens < 0:
            raise ValueError(
                f"request {self.rid!r}: prompt_len and max_new_tokens must be >= 0, got "
                f"{self.prompt_len} and {self.max_new_tokens}"
            )

    @property
    def total_tokens(self) -> int:
        return self.prompt_len + self.max_new_tokens


@dataclass(frozen=True, slots=True)
class Shard:
    """Tokens ``[start, end)`` of one request, held by ``rank``. ``end`` of the tail grows."""

    rank: int
    start: int
    end: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a request lives: its home rank and its shards in token order (tail last, on home)."""

    rid: str
    home_rank: int
    shards: tuple[Shard, ...]

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError(f"placement of {self.rid!r} has no shards")
        if self.shards[-1].rank != self.home_rank:
            raise ValueError(
                f"placement of {self.rid!r}: the tail shard must be on the home rank "
                f"{self.home_rank}, got rank {self.shards[-1].rank}"
            )

    @property
    def degree(self) -> int:
        """Number of distinct ranks holding KV of this request (the CP degree d)."""
        return len({s.rank for s in self.shards})

    @property
    def shard_ranks(self) -> tuple[int, ...]:
        """Ranks in token order, each once (home last)."""
        seen: dict[int, None] = {}
        for s in self.shards:
            seen[s.rank] = None
        ranks = [r for r in seen if r != self.home_rank]
        return tuple(ranks) + (self.home_rank,)

    def to_json(self) -> dict:
        """The form carried in ``meta_info["dcp"]``."""
        return {
            "home_rank": self.home_rank,
            "degree": self.degree,
            "shard_ranks": list(self.shard_ranks),
            "shards": [[s.rank, s.start, s.end] for s in self.shards],
        }


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was not admitted, and whether waiting for KV to free up could help.

    ``retry_at_ms``: a timed wait. On the policy's clock (``Policy.on_time``, ms), the time at
    which the answer may change with nothing freed (``dcp``'s ``cross_wait_ms``, ``age_ms``);
    ``None``: only freed KV can change it. The DP controller retries its queue then
    (``sglang/wait_queue.py``), as it retries on every finish."""

    rid: str
    reason: str
    retryable: bool
    retry_at_ms: float | None = None
