"""Cluster bookkeeping shared by every policy: per-rank aggregates kept incrementally.

``LedgerPolicy`` implements everything in ``Policy`` except the placement rule (``_plan``) and
the migration rule (``rebalance``). Per-rank aggregates are plain Python lists (faster than
numpy on 64 elements) and are updated in O(shards of one request) per call; no call scans the
live requests.

Accounting (per rank ``r``):
  ``kv[r]``     reserved KV tokens: sealed shards held + home tails sized to the page-rounded
                ``prompt_len + max_new_tokens``. Never exceeds ``cap[r]``.
  ``used[r]``   KV tokens actually written (prompt + appended tokens), ``<= kv[r]``.
  ``batch[r]``  live requests homed on r (its MoE / sampling batch).
  ``gin[r]``    guest items: requests homed elsewhere with at least one sealed shard on r.
  ``gout[r]``   remote parts of requests homed on r (sum over them of their non-home ranks).
  ``near[r]``   those of r's guest items, in (``gin``) and out (``gout``), whose peer rank is on
                r's node (``ClusterSpec.ranks_per_node``): they pay the intranode exchange rate.
  attention items on r = ``batch[r] + gin[r]``.
Per pair, ``pairs[h][g]``: requests homed on ``h`` with a sealed shard on ``g`` (queries ``h``
sends ``g`` each step); ``busiest_pair()`` is their maximum, which sets the server exchange's
bucket (``exchange.wire.bucket_for``), kept with a histogram of the pair counts.
"""

from __future__ import annotations

from sglang_dcp.planner.base import ClusterSpec, Migration, Policy, guest_ranks, page_up
from sglang_dcp.planner.pairs import PairCounts
from sglang_dcp.planner.prefill import PrefillTransient
from sglang_dcp.planner.record import Rec
from sglang_dcp.planner.reported import ReportedRanges
from sglang_dcp.planner.verify import VerifiedBooks
from sglang_dcp.types import Placement, Rejection, Request, Shard


class KVOverflowError(RuntimeError):
    """``append`` grew a request past its reservation and its home rank has no free page.

    The planner state is unchanged; the caller must preempt or abort the request.
    """


class LedgerPolicy(VerifiedBooks, PairCounts, PrefillTransient, ReportedRanges, Policy):
    """Base for all policies. Subclasses implement ``_plan`` (and may override ``rebalance``).

    ``_plan(request, home_rank)`` returns ``Rejection`` or ``(home, sealed, tail_start)`` with
    ``sealed`` a list of ``[rank, start, end]`` page-aligned ranges covering ``[0, tail_start)``
    and ``tail_start <= (prompt_len // page) * page``; it must respect free capacity.
    """

    def __init__(self, cluster: ClusterSpec) -> None:
        n = cluster.num_ranks
        self.cluster = cluster
        self.num_ranks = n
        self.page = cluster.page_size
        self.cap = list(cluster.kv_capacity)
        self.kv = [0] * n
        self.used = [0] * n
        self.batch = [0] * n
        self.gin = [0] * n
        self.gout = [0] * n
        self.near = [0] * n
        self._recs: dict[str, Rec] = {}
        self._homed: list[dict[str, None]] = [{} for _ in range(n)]
        self._hosted: list[dict[str, None]] = [{} for _ in range(n)]  # rids with a sealed shard
        self.num_guest_items = 0  # cluster-wide sum of gin
        self._split_recs: dict[str, Rec] = {}  # live requests with a guest shard
        self._init_pairs(n)

    # ---- subclass hooks -------------------------------------------------------------------

    def _plan(self, request: Request, home_rank: int | None):  # pragma: no cover - abstract
        raise NotImplementedError

    def _touched(self, rank: int) -> None:
        """Called after rank ``rank``'s aggregates changed (dcp refreshes its cost cache)."""

    # ---- Policy API -----------------------------------------------------------------------

    def admit(self, request: Request, home_rank: int | None = None) -> Placement | Rejection:
        """Place ``request``; with ``home_rank`` the home is pinned (an external router chose it).

        Pinned home contract: the tail (and for d = 1 policies the whole request) must fit in
        that rank's free KV; otherwise a ``Rejection`` names the rank, and is retryable only if
        the rank's total capacity could ever hold it. Other shards are still placed freely.
        """
        if request.rid in self._recs:
            raise ValueError(f"request {request.rid!r} is already admitted")
        if home_rank is not None and not (0 <= home_rank < self.num_ranks):
            raise ValueError(f"home_rank {home_rank} out of range [0, {self.num_ranks})")
        plan = self._plan(request, home_rank)
        if isinstance(plan, Rejection):
            return plan
        home, sealed, tail_start = plan
        return self._commit(request, home, sealed, tail_start)

    def append(self, rid: str, num_tokens: int = 1) -> None:
        """``num_tokens`` decoded tokens were written to ``rid``'s tail on its home rank.

        Past the reservation the home tail grows by whole pages; if the home rank has no free
        page, raises ``KVOverflowError`` and changes nothing.
        """
        if num_tokens < 0:
            raise ValueError(f"append: num_tokens must be >= 0, got {num_tokens}")
        rec = self._recs[rid]
        h = rec.home
        new_len = rec.length + num_tokens
        if new_len > rec.resv_end:
            new_end = page_up(new_len, self.page)
            extra = new_end - rec.resv_end
            if self.kv[h] + extra > self.cap[h]:
                raise KVOverflowError(
                    f"request {rid!r} needs {extra} more KV tokens on home rank {h} "
                    f"({self.cap[h] - self.kv[h]} free of {self.cap[h]})"
                )
            self.kv[h] += extra
            rec.resv_end = new_end
        rec.length = new_len
        self.used[h] += num_tokens
        self._touched(h)

    def finish(self, rid: str) -> None:
        """The request finished or was aborted: free exactly what it holds on every rank."""
        rec = self._recs.pop(rid)
        h = rec.home
        kv, used = self.kv, self.used
        for r, s, e in rec.sealed:
            kv[r] -= e - s
            used[r] -= e - s
        kv[h] -= rec.resv_end - rec.tail_start + rec.transient
        used[h] -= rec.length - rec.tail_start
        self.batch[h] -= 1
        del self._homed[h][rid]
        self._drop_guests(rec)
        self._touched(h)
        for g in rec.guests:
            self._touched(g)

    def set_capacity(self, rank: int, kv_tokens: int) -> None:
        """Rank ``rank`` now has ``kv_tokens`` of KV. Lowering it below what is reserved there
        raises ``ValueError``: migrate or finish requests first."""
        if not (0 <= rank < self.num_ranks):
            raise ValueError(f"rank {rank} out of range [0, {self.num_ranks})")
        if kv_tokens < 0 or kv_tokens % self.page:
            raise ValueError(
                f"kv_tokens={kv_tokens} must be a non-negative multiple of page_size {self.page}"
            )
        if kv_tokens < self.kv[rank]:
            raise ValueError(
                f"rank {rank} holds {self.kv[rank]} reserved KV tokens; cannot shrink its "
                f"capacity to {kv_tokens}"
            )
        self.cap[rank] = kv_tokens
        self._touched(rank)

    def rebalance(self, max_moved_tokens: int) -> list[Migration]:
        """Baselines never migrate KV (SGLang's DP controller does not): returns ``[]``."""
        return []

    def placement(self, rid: str) -> Placement:
        rec = self._recs[rid]
        shards = [Shard(r, s, e) for r, s, e in rec.sealed]
        shards.append(Shard(rec.home, rec.tail_start, rec.length))
        return Placement(rid, rec.home, tuple(shards))

    def kv_tokens(self) -> list[int]:
        return list(self.kv)

    def batch_sizes(self) -> list[int]:
        return list(self.batch)

    def guest_items(self) -> list[int]:
        return list(self.gin)

    # ---- extra read-only views ------------------------------------------------------------

    def kv_used(self) -> list[int]:
        """KV tokens actually written per rank (``<= kv_tokens()``)."""
        return list(self.used)

    def guest_out(self) -> list[int]:
        """Remote parts of the requests homed on each rank (what the home merges)."""
        return list(self.gout)

    def guest_near(self) -> list[int]:
        return list(self.near)

    def capacity(self) -> list[int]:
        return list(self.cap)

    def free_kv(self) -> list[int]:
        return [c - k for c, k in zip(self.cap, self.kv)]

    def live(self) -> list[str]:
        """Live request ids in admission order."""
        return list(self._recs)

    def __contains__(self, rid: object) -> bool:
        return rid in self._recs

    def __len__(self) -> int:
        return len(self._recs)

    # ---- internals ------------------------------------------------------------------------

    def _commit(
        self, req: Request, home: int, sealed: list[list[int]], tail_start: int
    ) -> Placement:
        ps = self.page
        resv_end = page_up(req.prompt_len + req.max_new_tokens, ps)
        kv, used = self.kv, self.used
        shards = []
        for r, s, e in sealed:
            kv[r] += e - s
            used[r] += e - s
            shards.append(Shard(r, s, e))
        extra = self._prefill_extra(req.prompt_len, resv_end, home, sealed)
        kv[home] += resv_end - tail_start + extra
        used[home] += req.prompt_len - tail_start
        self.batch[home] += 1
        rec = Rec(req.rid, home, sealed, tail_start, req.prompt_len, resv_end, extra)
        self._recs[req.rid] = rec
        self._homed[home][req.rid] = None
        self._add_guests(rec)
        self._touched(home)
        for g in rec.guests:
            self._touched(g)
        shards.append(Shard(home, tail_start, req.prompt_len))
        return Placement(req.rid, home, tuple(shards))

    def _add_guests(self, rec: Rec) -> None:
        self._count_guests(rec, 1)

    def _drop_guests(self, rec: Rec) -> None:
        self._count_guests(rec, -1)

    def _count_guests(self, rec: Rec, sign: int) -> None:
        """Add (``sign`` 1) or remove (-1) ``rec``'s guest items in every per-rank aggregate."""
        same_node, home = self.cluster.same_node, rec.home
        for g in rec.guests:
            self.gin[g] += sign
            if sign > 0:
                self._hosted[g][rec.rid] = None
            else:
                del self._hosted[g][rec.rid]
            if same_node(g, home):
                self.near[g] += sign
                self.near[home] += sign
            self._count_pair(home, g, sign)
        self.gout[home] += sign * len(rec.guests)
        self.num_guest_items += sign * len(rec.guests)
        if rec.guests:
            if sign > 0:
                self._split_recs[rec.rid] = rec
            else:
                del self._split_recs[rec.rid]

    def _move(self, rid: str, src: int, dst: int, start: int, end: int) -> Migration:
        """Move written, page-aligned tokens ``[start, end)`` of ``rid`` from ``src`` to
        ``dst``: part of one sealed shard, or the sealed prefix of the tail (``start ==
        tail_start``, ``end <= length`` rounded down to a page). Never moves the tail itself."""
        rec = self._recs[rid]
        ps = self.page
        assert start % ps == 0 and end % ps == 0 and start < end and src != dst
        old = [list(s) for s in rec.sealed]
        if start == rec.tail_start:
            assert src == rec.home and end <= (rec.length // ps) * ps, "not a sealed tail prefix"
            old.append([src, start, end])  # carve the prefix off the tail
            rec.tail_start = end
        pieces = []
        for r, s, e in old:
            if r == src and s <= start and end <= e:
                if s < start:
                    pieces.append([r, s, start])
                pieces.append([dst, start, end])
                if end < e:
                    pieces.append([r, end, e])
            else:
                pieces.append([r, s, e])
        assert any(p[0] == dst and p[1] == start for p in pieces), "range not held by src"
        merged: list[list[int]] = []
        for p in pieces:
            if merged and merged[-1][0] == p[0] and merged[-1][2] == p[1]:
                merged[-1][2] = p[2]
            else:
                merged.append(p)
        if merged and merged[-1][0] == rec.home and merged[-1][2] == rec.tail_start:
            rec.tail_start = merged.pop()[1]  # a shard moved home next to the tail joins it
        self._drop_guests(rec)
        rec.sealed = merged
        old_guests = rec.guests
        rec.guests = guest_ranks(merged, rec.home)
        self._add_guests(rec)
        m = end - start
        self.kv[src] -= m
        self.used[src] -= m
        self.kv[dst] += m
        self.used[dst] += m
        for r in {src, dst, rec.home, *old_guests, *rec.guests}:
            self._touched(r)
        return Migration(rid, src, dst, start, end)
