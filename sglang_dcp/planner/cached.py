"""Placing a request on the layout where its cached prefix lies (issue 26: the planner knows
where prefixes lie).

Pure Python. A new turn of a multi-turn session extends a context whose KV may still be cached
on the ranks that held the previous turn: sealed ranges ``[rank, start, end]`` on their holders
and the home's tail from ``tail_start``. ``admit_on_layout`` admits the request on exactly that
layout (same home, same sealed ranges, the tail grown by the new tokens) so that only uncached
tokens are prefilled; ``None`` when it may not, and the caller places it freely (recomputing the
prefix wherever it lands). The weighing, cache hit against balance:

- it must fit: each holder's free KV covers its range, the home's covers its tail up to the
  page-rounded ``prompt_len + max_new_tokens`` (the cached tokens are in free KV, not in the
  books: a cache is evictable memory);
- under a step budget (``dcp``'s ``step_slo_ms``) the layout's predicted step
  (``StepBudget._predicted_step_us``) must be within it, or the cluster empty: the budget is the
  balance bound the planner admits everything else against, so a hit never buys a step over the
  SLO. Within it, the hit wins: the prefill it saves (seconds for a 100k+ context) costs every
  rank of an EP cluster a stall, far more than the balance a free placement could gain.

The sealed ranges are the cached request's: page-aligned, covering ``[0, tail_start)`` with
``tail_start <= prompt_len`` (a later turn's prompt extends the earlier one), as ``_commit``
requires.
"""

from __future__ import annotations

from sglang_dcp.planner.state import LedgerPolicy, page_up
from sglang_dcp.types import Placement, Request


def admit_on_layout(policy: LedgerPolicy, req: Request, home: int, sealed,
                    tail_start: int) -> Placement | None:
    """Admit ``req`` on ``(home, sealed, tail_start)`` if it fits (and, with a step budget, stays
    within it); else ``None`` with nothing recorded."""
    if req.rid in policy:
        raise ValueError(f"request {req.rid!r} is already admitted")
    if tail_start > req.prompt_len or (sealed and sealed[-1][2] != tail_start):
        return None
    resv = page_up(req.prompt_len + req.max_new_tokens, policy.page)
    need: dict[int, int] = {home: resv - tail_start}
    for r, s, e in sealed:
        need[r] = need.get(r, 0) + (e - s)
    if any(policy.cap[r] - policy.kv[r] < k for r, k in need.items()):
        return None
    slo = getattr(policy, "step_slo_us", None)
    if slo is not None and len(policy):
        step = policy._predicted_step_us(home, [list(x) for x in sealed], resv - tail_start)
        if step > policy._budget_for(req.rid):
            return None
    return policy._commit(req, home, [list(x) for x in sealed], tail_start)
