"""What SGLang's hooks and the other subsystems may change on a rank's runtime.

``datapath.RankRuntime`` is mutated only by the data path (``datapath``, ``header``,
``prefill_shards``, ``shipping``, ``step_build``); the hooks (``sched_hooks``), PD landing
(``pd_landing``) and piece adoption (``piece_adopt``) call these methods instead of writing its
attributes (``test/unit/test_runtime_owners.py`` checks it). Their own state (the landing
receivers, the adoptions, the piece cache) lives in one slot each, written only by its module.
"""

from __future__ import annotations

from typing import Any

from sglang_dcp.sglang.entries import GuestEntry, HomeEntry
from sglang_dcp.sglang.layout import KvLayout


class RuntimeApi:
    """Mixed into ``datapath.RankRuntime`` (its ``incoming``, ``home``, ``guests``,
    ``split_reqs``, ``releases``, ``model_runner``, ``step``)."""

    # -- the step header (sched_hooks) ----------------------------------------------------------
    def begin_header(self, model_runner) -> None:
        """A scheduler iteration's header starts: no step until ``set_step``."""
        self.model_runner = model_runner
        self.step = None

    def set_step(self, step) -> None:
        """The step the next forward runs (``context.current_step``)."""
        self.step = step

    # -- requests -------------------------------------------------------------------------------
    def expect(self, rid: str, placement) -> None:
        """``rid`` came with ``placement``: ``attach`` puts it on the ``Req`` SGLang queues."""
        self.incoming[rid] = placement

    def land(self, req: Any, layout: KvLayout) -> None:
        """``req``, homed here, starts as after its moves (``layout``, a PD landing)."""
        self.home[req.rid] = HomeEntry(req, layout, shipped=True)

    def set_layout(self, rid: str, layout: KvLayout) -> None:
        """The home's request ``rid`` is now laid out as ``layout`` (adopted pieces, pieces kept
        at release)."""
        self.home[rid].layout = layout

    def drop_unstarted(self, req: Any, *, tell_guests: bool) -> None:
        """``req`` ended before its first chunk (it adopted pieces): no longer a split request
        here; ``tell_guests``: its guests release what they adopted at the next header."""
        if self.split_reqs.get(req.rid) is req:
            del self.split_reqs[req.rid]
        if tell_guests:
            self.releases.append(req.rid)

    # -- guests ---------------------------------------------------------------------------------
    def add_guest(self, rid: str, entry: GuestEntry) -> None:
        """KV of ``rid`` is held here from now on (a PD landing, adopted pieces)."""
        self.guests[rid] = entry

    def drop_guest(self, rid: str) -> GuestEntry | None:
        """``rid``'s guest entry, no longer held (the caller frees its slots)."""
        return self.guests.pop(rid, None)
