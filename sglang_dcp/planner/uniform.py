"""``uniform``: static context parallelism, as SGLang ``--dcp-size`` / vLLM ``-dcp`` do it.

The ranks form fixed groups of ``group_size`` consecutive ranks (``num_ranks`` must be a
multiple). By default the largest size up to 8 that divides ``num_ranks`` and, where the
cluster spans nodes, the node's ``ranks_per_node``: a DCP group lives inside one TP group, so
inside one node, as those deployments run it (12 ranks on nodes of 8: groups of 4, not 6
straddling two nodes, whose exchange would cross nodes every step). Every request, short or
long, is split evenly over the ranks of one group:

- group: the one with the fewest reserved KV tokens among those where the request fits (ties:
  lowest group index); with a pinned home, the home's group.
- home: the group's rank with the fewest homed requests, then fewest KV tokens, then lowest index
  (where ranks differ in capacity and the request fits only with another home, that one).
- shares: the page-rounded reservation has ``T`` pages; every non-home rank of the group takes
  ``T // group_size`` pages of the prompt's full pages (in rank order, as long as full prompt
  pages last); the home keeps the rest as its tail. A request with fewer pages than the group
  lands on fewer ranks.

If no group fits now but an empty group would, the rejection is retryable.
"""

from __future__ import annotations

from sglang_dcp.planner.base import ClusterSpec
from sglang_dcp.planner.state import LedgerPolicy, page_up
from sglang_dcp.types import Rejection, Request


class UniformPolicy(LedgerPolicy):
    name = "uniform"

    def __init__(self, cluster: ClusterSpec, group_size: int | None = None) -> None:
        super().__init__(cluster)
        n = cluster.num_ranks
        if group_size is None:
            rpn = cluster.ranks_per_node if n > cluster.ranks_per_node else n
            group_size = max(g for g in range(1, min(8, n) + 1) if n % g == 0 and rpn % g == 0)
        if group_size < 1 or n % group_size:
            raise ValueError(
                f"uniform: group_size={group_size} must be >= 1 and divide num_ranks={n}"
            )
        self.group_size = group_size
        self.num_groups = n // group_size

    def _split(self, req: Request, resv: int, group: int, home: int):
        """Sealed ranges and tail start for ``req`` over ``group`` with ``home``."""
        ps, g = self.page, self.group_size
        share = (resv // ps) // g * ps
        prompt_full = (req.prompt_len // ps) * ps
        sealed: list[list[int]] = []
        pos = 0
        if share:
            for r in range(group * g, group * g + g):
                if r == home:
                    continue
                take = min(share, prompt_full - pos)
                if take <= 0:
                    break
                sealed.append([r, pos, pos + take])
                pos += take
        return sealed, pos

    def _fits(self, sealed, tail_start: int, resv: int, home: int, empty: bool = False) -> bool:
        kv, cap = self.kv, self.cap
        for r, s, e in sealed:
            if (0 if empty else kv[r]) + e - s > cap[r]:
                return False
        return (0 if empty else kv[home]) + resv - tail_start <= cap[home]

    def _homes(self, group: int) -> list[int]:
        """The group's ranks, preferred home first (fewest homed, fewest KV tokens, index)."""
        g = self.group_size
        return sorted(range(group * g, group * g + g), key=lambda r: (self.batch[r], self.kv[r], r))

    def _plan(self, req: Request, home_rank: int | None):
        resv = page_up(req.prompt_len + req.max_new_tokens, self.page)
        g = self.group_size
        if home_rank is not None:
            groups = [home_rank // g]
        else:
            kv = self.kv
            load = [sum(kv[i * g:(i + 1) * g]) for i in range(self.num_groups)]
            groups = sorted(range(self.num_groups), key=lambda i: (load[i], i))
        ever = False
        for grp in groups:
            homes = [home_rank] if home_rank is not None else self._homes(grp)
            for home in homes:  # the preferred home first; another where ranks differ in size
                sealed, tail_start = self._split(req, resv, grp, home)
                if self._fits(sealed, tail_start, resv, home):
                    return home, sealed, tail_start
                ever = ever or self._fits(sealed, tail_start, resv, home, empty=True)
        return self._reject(req, resv, home_rank, ever)

    def never_fits(self, request: Request, home_rank: int | None = None) -> Rejection | None:
        resv = page_up(request.prompt_len + request.max_new_tokens, self.page)
        g = self.group_size
        homes = [home_rank] if home_rank is not None else range(self.num_ranks)
        for home in homes:
            sealed, tail_start = self._split(request, resv, home // g, home)
            if self._fits(sealed, tail_start, resv, home, empty=True):
                return None
        return self._reject(request, resv, home_rank, ever=False)

    def _reject(self, req: Request, resv: int, home_rank: int | None, ever: bool) -> Rejection:
        g = self.group_size
        where = f"pinned home rank {home_rank}'s group" if home_rank is not None else "any group"
        if ever:
            return Rejection(
                req.rid,
                f"request needs {resv} KV tokens split over {g} ranks; {where} has not enough "
                f"free KV now",
                retryable=True,
            )
        return Rejection(
            req.rid,
            f"request needs {resv} KV tokens (prompt {req.prompt_len} + max_new "
            f"{req.max_new_tokens}, page-rounded); split evenly over {g} ranks it exceeds the "
            f"capacity of {where} even when empty",
            retryable=False,
        )
