"""A targeted hold for ``dcp``: ranks kept for one request the step budget holds back.

Mixed into ``DcpPolicy`` (rule 6 of its docstring). Under a step budget a long request can
rarely be placed: whole, its attention alone lifts one rank past the budget; split, every rank
it would touch must have room under the budget, and while it waits the room each finish frees
goes to the shorter requests behind it (first fit), so the ranks never drain for it. Its wait,
not the step, then breaks the SLO (``bench/sim_diagnose.py`` measures it: waits charged to the
budget's refusals, P99 of seconds).

The hold: when the budget refuses a request and no hold stands, the ranks of its best plan (the
whole placement or the split, whichever predicts the shorter step) are held for it: other
requests are placed as if those ranks had no free KV (they go elsewhere or wait). Each time the
held request is refused again the held ranks follow its new best plan (ranks drain at different
speeds); once it is admitted the hold ends. Requests pinned to a home (``home_rank``) ignore the
hold. A hold whose request stops retrying (aborted by its caller) lapses after
``HOLD_STALE_ADMITS`` other admissions. One hold at a time: O(1) per call besides the
``rank in held`` tests of the home and guest choices.
"""

from __future__ import annotations

from sglang_dcp.types import Rejection

HOLD_STALE_ADMITS = 4096


class TargetedHold:
    hold: bool = False  # set by DcpPolicy (option ``hold``)
    _hold_rid: str | None = None
    _hold_ranks: frozenset[int] = frozenset()
    _hold_stale = 0
    _excl: frozenset[int] = frozenset()  # ranks the current placement may not use
    _refused_plan = None  # (home, sealed) of the last budget refusal's best plan

    def held(self) -> tuple[str | None, frozenset[int]]:
        """The request a hold stands for (None: no hold) and its ranks."""
        return self._hold_rid, self._hold_ranks

    def _hold_enter(self, rid: str, home_rank: int | None) -> None:
        """Before placing ``rid``: exclude the held ranks unless it holds them or is pinned."""
        self._refused_plan = None
        if self._hold_rid is not None and rid != self._hold_rid and home_rank is None:
            self._excl = self._hold_ranks
        else:
            self._excl = frozenset()

    def _hold_exit(self, rid: str, home_rank: int | None, got) -> None:
        """After placing ``rid`` (``got``: plan or ``Rejection``): start, move or end the hold."""
        self._excl = frozenset()
        if not self.hold:
            return
        refused = isinstance(got, Rejection)
        if rid == self._hold_rid:
            self._hold_stale = 0
            if not refused:
                self._hold_rid, self._hold_ranks = None, frozenset()
                return
        elif not refused and self._hold_rid is not None:
            self._hold_stale += 1
            if self._hold_stale > HOLD_STALE_ADMITS:
                self._hold_rid, self._hold_ranks = None, frozenset()
            return
        if not refused or home_rank is not None or self._refused_plan is None:
            return
        if self._hold_rid is None or self._hold_rid == rid:
            home, sealed = self._refused_plan
            self._hold_rid = rid
            self._hold_ranks = frozenset([home, *(r for r, _, _ in sealed)])
            self._hold_stale = 0
