"""The planner interface: every placement policy (baselines and ``dcp``) implements ``Policy``.

Pure Python: no torch, no SGLang, no torch.distributed. The simulator and the SGLang DP
controller both drive a ``Policy`` through exactly these methods.

Interface changes (additions only): ``admit`` takes an optional ``home_rank`` (an external
router pins the home; the policy still places the other shards, and returns a ``Rejection``
naming that rank if it cannot host the tail). Implementations (``state.LedgerPolicy``) also
offer ``kv_used()``, ``capacity()``, ``free_kv()``, ``live()`` and ``verify()``; build them
with ``sglang_dcp.planner.make_policy``. ``guest_out()`` (per-rank remote parts of the requests
homed there) is part of the interface, and ``waiting_rank(rid)`` says, in O(1), which rank a
retryably rejected request is bound to (``None``: it may go anywhere; only the SGLang baselines,
whose dispatch is final, bind it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from sglang_dcp.types import Placement, Rejection, Request


def page_up(tokens: int, page: int) -> int:
    """``tokens`` rounded up to whole pages."""
    return -(-tokens // page) * page


def guest_ranks(sealed, home: int) -> tuple[int, ...]:
    """The ranks other than ``home`` holding one of ``sealed``'s ``[rank, start, end]`` ranges,
    in first-seen order."""
    seen: dict[int, None] = {}
    for s in sealed:
        if s[0] != home:
            seen[s[0]] = None
    return tuple(seen)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Static shape of the decode cluster: ``num_ranks`` DP-attention ranks.

    ``kv_capacity`` is per rank, in tokens, a multiple of ``page_size``. Ranks
    ``[k * ranks_per_node, (k + 1) * ranks_per_node)`` share node ``k`` (NVLink between them,
    RDMA across nodes); the exchange of a guest item costs less when both ranks share a node.
    """

    num_ranks: int
    kv_capacity: tuple[int, ...]
    page_size: int = 64
    ranks_per_node: int = 8

    def same_node(self, a: int, b: int) -> bool:
        """Ranks ``a`` and ``b`` share a node (their exchange runs over NVLink)."""
        return a // self.ranks_per_node == b // self.ranks_per_node

    def __post_init__(self) -> None:
        if self.num_ranks < 1:
            raise ValueError(f"num_ranks must be >= 1, got {self.num_ranks}")
        if len(self.kv_capacity) != self.num_ranks:
            raise ValueError(
                f"kv_capacity has {len(self.kv_capacity)} entries for {self.num_ranks} ranks"
            )
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        if isinstance(self.ranks_per_node, bool) or not isinstance(self.ranks_per_node, int) \
                or self.ranks_per_node < 1:
            raise ValueError(f"ranks_per_node must be an int >= 1, got {self.ranks_per_node!r}")
        for r, c in enumerate(self.kv_capacity):
            if c < 0 or c % self.page_size:
                raise ValueError(
                    f"kv_capacity[{r}]={c} must be a non-negative multiple of page_size "
                    f"{self.page_size}"
                )

    @classmethod
    def uniform(cls, num_ranks: int, kv_capacity: int, page_size: int = 64,
                ranks_per_node: int = 8) -> "ClusterSpec":
        cap = kv_capacity - kv_capacity % page_size
        return cls(num_ranks=num_ranks, kv_capacity=(cap,) * num_ranks, page_size=page_size,
                   ranks_per_node=ranks_per_node)


@dataclass(frozen=True, slots=True)
class Migration:
    """Move sealed tokens ``[start, end)`` of request ``rid`` from ``src`` to ``dst``."""

    rid: str
    src: int
    dst: int
    start: int
    end: int


class Policy(ABC):
    """A placement policy over a cluster. Deterministic for the same sequence of calls.

    KV accounting: ``admit`` reserves, on the ranks it names, every token the request can ever
    hold (prompt + max_new_tokens, page-rounded); ``finish`` frees exactly that. ``append``
    tracks tokens actually written (for load reporting); it never moves KV.
    """

    name: str = ""

    @abstractmethod
    def admit(self, request: Request, home_rank: int | None = None) -> Placement | Rejection: ...

    @abstractmethod
    def append(self, rid: str, num_tokens: int = 1) -> None: ...

    @abstractmethod
    def finish(self, rid: str) -> None:
        """The request finished or was aborted: free all of its shards."""

    @abstractmethod
    def set_capacity(self, rank: int, kv_tokens: int) -> None: ...

    @abstractmethod
    def rebalance(self, max_moved_tokens: int) -> list[Migration]:
        """Propose (and apply to the planner's state) bounded shard migrations."""

    @abstractmethod
    def placement(self, rid: str) -> Placement: ...

    # Per-rank loads, length num_ranks. kv = reserved KV tokens (home tails + guest shards),
    # batch = live requests homed there, guest_items = requests with a sealed shard there.
    @abstractmethod
    def kv_tokens(self) -> list[int]: ...

    @abstractmethod
    def batch_sizes(self) -> list[int]: ...

    @abstractmethod
    def guest_items(self) -> list[int]: ...

    # guest_out = remote shards of the requests homed there (what each home sends q to and
    # merges partials from); sum(guest_out) == sum(guest_items).
    @abstractmethod
    def guest_out(self) -> list[int]: ...

    def guest_near(self) -> list[int]:
        """Per rank: how many of its guest items (in and out) have their peer on the same node
        (``ClusterSpec.ranks_per_node``); they pay the intranode exchange rate."""
        return [0] * len(self.guest_out())

    def on_time(self, now_ms: float, step: int) -> None:
        """The clock of whoever drives the policy: time in ms and decode steps run so far.
        Policies that see loads through periodic snapshots refresh them here; the default
        ignores it. Called before each batch of admissions."""

    def never_fits(self, request: Request, home_rank: int | None = None) -> Rejection | None:
        """The non-retryable ``Rejection`` that ``admit`` would give a request that could not be
        placed even in an empty cluster, without placing or recording anything; ``None`` when
        it could fit some day, or when the policy cannot tell without admitting it."""
        return None

    def prefill_done(self, rid: str) -> bool:
        """The home finished prefilling ``rid``: release what the books held for its prefill
        beyond its reservation (``planner/prefill.py``). Returns whether they changed."""
        return False

    def waiting_rank(self, rid: str) -> int | None:
        """The rank request ``rid`` waits for after a retryable rejection, or ``None`` if the
        policy does not bind waiting requests to a rank (it places globally). O(1)."""
        return None
