"""What a request could ever get: SGLang's own bound on new tokens and the planner's fit search.

``sglang_max_new_bound`` mirrors SGLang 0.5.21's limit on the tokens a request may decode;
``FitSearch`` (a mixin of ``dispatcher.DcpDispatcher``) finds the largest ``max_new_tokens`` the
planner could ever place for a prompt and words why a request can never be placed. SGLang-free.
"""

from __future__ import annotations

from typing import Any

from sglang_dcp.planner.base import Policy, page_up
from sglang_dcp.types import Rejection, Request

# Where SGLang gives no bound (tests): the most new tokens the fit search looks at.
SEARCH_CEILING = 1 << 22


def sglang_max_new_bound(
    prompt: int, *, max_req_len: int, pool_tokens: int, page: int, limit: int | None = None
) -> int:
    """The most new tokens SGLang 0.5.21 lets a ``prompt``-token request decode, whatever its
    ``max_new_tokens`` (``Scheduler.init_req_max_new_tokens``, scheduler.py:2515, and
    ``max_new_tokens_for_memory``, mem_cache/allocator/base.py:79): ``max_req_len`` (context
    length and pool, minus one) and the rank's pool, and ``SGLANG_MAX_NEW_TOKENS_LIMIT``."""
    bound = min(max_req_len - prompt - 1, pool_tokens - page_up(prompt, page) - page - 1)
    if limit:
        bound = min(bound, limit)
    return max(0, bound)


def prompt_len(req: Any) -> int:
    if getattr(req, "input_ids", None) is not None:
        return len(req.input_ids)
    embeds = getattr(req, "input_embeds", None)
    return len(embeds) if embeds is not None else 0


class FitSearch:
    """Needs ``policy``, ``max_new_bound`` and ``empty_policy`` (``DcpDispatcher``'s)."""

    def _bound(self, prompt: int) -> int:
        return SEARCH_CEILING if self.max_new_bound is None else self.max_new_bound(prompt)

    def _ever_fits(self, prompt: int, max_new: int, home: int | None) -> bool:
        """Some day, in an empty cluster, the planner could place this request."""
        policy, r = self.policy, Request("fit-probe", prompt, max_new)
        if self.empty_policy is not None:
            # admit itself, into an empty copy: ``never_fits`` can be more optimistic than
            # ``admit`` (dcp: a 3000-token prompt + 968 new over 4 x 1024 passes never_fits
            # but an empty cluster "cannot place it now"), and a request stamped with such a
            # budget would wait forever
            return not isinstance(self.empty_policy().admit(r, home_rank=home), Rejection)
        if type(policy).never_fits is not Policy.never_fits:
            return policy.never_fits(r, home_rank=home) is None
        # baselines: one rank holds the whole request (planner/baselines.py)
        cap = policy.cap[home] if home is not None else max(policy.cap)
        return page_up(prompt + max_new, policy.page) <= cap

    def fit_max_new(self, prompt: int, home: int | None = None) -> int | None:
        """The largest ``max_new_tokens`` (at most SGLang's bound) the planner could ever place
        for a ``prompt``-token request; ``None`` if not even the prompt fits. Binary search:
        a few dozen ``never_fits`` calls, microseconds each."""
        lo, hi = 0, self._bound(prompt)
        if not self._ever_fits(prompt, lo, home):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._ever_fits(prompt, mid, home):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _never_reason(self, req: Any, planner_reason: str | None = None) -> str:
        """Why a request can never be placed, stated by its binding limit: the most new tokens
        its prompt leaves room for (the decode tail stays on the home rank) or, when not even
        the prompt fits, the planner's own account."""
        p = prompt_len(req)
        home = getattr(req, "routed_dp_rank", None)
        fit = self.fit_max_new(p, home)
        want = getattr(req.sampling_params, "max_new_tokens", None)
        if fit is None or want is None or want <= fit:
            if planner_reason is None and self.empty_policy is not None:
                probe = self.empty_policy().admit(Request(req.rid, p, 0), home_rank=home)
                planner_reason = getattr(probe, "reason", None)
            return planner_reason or f"a {p}-token prompt does not fit even an empty cluster"
        cap = self.policy.cap[home] if home is not None else max(self.policy.cap)
        where = f"pinned home rank {home}" if home is not None else "a rank"
        return (
            f"max_new_tokens {want} cannot be reserved: with a {p}-token prompt at most {fit} "
            f"new tokens fit: the decode tail (every new token, with the prompt's pages that "
            f"cannot move to other ranks) stays on its home rank, and {where} holds {cap} KV "
            "tokens"
        )
