"""The home's prefill transient of a split request, when its prompt is prefilled into shards.

Pure Python. With prefill into shards (issue 18; ``DcpPolicy(prefill_chunk=C)``), a split
request's prompt is prefilled at its home in chunks of ``C`` tokens, and each chunk's tokens that
belong to another rank leave the home once the chunk is written. The home then never holds more
of the request than its own prompt tokens plus one chunk on its way out::

    home peak = page_up(prompt_len - tail_start) + page_up(min(C, sealed))      (tokens)

(``tail_start`` and the shard ends are page-aligned; ``sealed``: the request's tokens held by
other ranks.) Its books there are ``resv - tail_start`` (the tail, up to ``prompt_len +
max_new_tokens`` page-rounded); decode tokens come after prefill, so the tail's decode room covers
part of the chunk, and what the books must add is

    transient = max(0, page_up(prompt_len) + page_up(min(C, sealed)) - resv)

at most one chunk. It grows with ``sealed`` up to ``C``, so the bound over every split of a
request is the one at ``sealed = pfull`` (every full prompt page). ``DcpPolicy`` plans splits
against that bound (the home's room for its tail is its free KV less the bound), books the
transient of the plan it takes on the home, and keeps it until ``prefill_done(rid)`` (the home's
prefill ended) or the request finishes. Unsplit requests prefill at home whole, inside their
reservation: no transient. Without ``prefill_chunk`` nothing here runs (the home prefills a split
request whole; its pool must hold the prompt, which the books do not count).

Mixed into ``state.LedgerPolicy``; the policy provides ``_recs``, ``kv``, ``page`` and
``_touched``, and ``prefill_chunk`` where it models prefill into shards (``dcp``).
"""

from __future__ import annotations


def _page_up(tokens: int, page: int) -> int:
    return -(-tokens // page) * page


def prefill_transient(prompt_len: int, resv: int, sealed: int, chunk: int, page: int) -> int:
    """KV tokens the home holds beyond its reservation during prefill into shards (>= 0).

    ``resv``: the request's page-rounded ``prompt_len + max_new_tokens``; ``sealed``: its
    tokens held by other ranks; ``chunk``: prefill chunk, tokens."""
    if sealed <= 0 or chunk <= 0:
        return 0
    return max(0, _page_up(prompt_len, page) + _page_up(min(chunk, sealed), page) - resv)


class PrefillTransient:
    prefill_chunk: int | None = None  # tokens; None: the home prefills split requests whole

    def _transient_bound(self, prompt_len: int, resv: int, pfull: int) -> int:
        """The largest transient any split of this request can have (``sealed = pfull``)."""
        if not self.prefill_chunk:
            return 0
        return prefill_transient(prompt_len, resv, pfull, self.prefill_chunk, self.page)

    def _prefill_extra(self, prompt_len: int, resv: int, home: int, sealed) -> int:
        """What ``_commit`` books on the home for the prefill of a plan with ``sealed``
        ranges ``[rank, start, end]``."""
        if not self.prefill_chunk:
            return 0
        away = sum(e - s for r, s, e in sealed if r != home)
        return prefill_transient(prompt_len, resv, away, self.prefill_chunk, self.page)

    def prefill_done(self, rid: str) -> bool:
        """The home finished prefilling ``rid``: release its prefill transient. Returns whether
        the books changed (a request without a transient, or gone already, changes nothing)."""
        rec = self._recs.get(rid)
        if rec is None or not rec.transient:
            return False
        self.kv[rec.home] -= rec.transient
        rec.transient = 0
        self._touched(rec.home)
        return True
