"""One live request in a ledger policy's books (``state.LedgerPolicy``)."""

from __future__ import annotations

from sglang_dcp.planner.base import guest_ranks


class Rec:
    """One live request. ``sealed``: ``[rank, start, end]`` lists in token order covering
    ``[0, tail_start)``; the tail ``[tail_start, length)`` lives on ``home`` and has
    ``resv_end - tail_start`` tokens reserved there."""

    __slots__ = ("rid", "home", "sealed", "tail_start", "length", "resv_end", "guests",
                 "transient")

    def __init__(self, rid, home, sealed, tail_start, length, resv_end, transient=0):
        self.rid = rid
        self.home = home
        self.sealed = sealed
        self.tail_start = tail_start
        self.length = length
        self.resv_end = resv_end
        self.guests = guest_ranks(sealed, home)
        self.transient = transient  # home KV booked for prefill into shards (prefill.py)
