"""The DCP step header on SGLang's own per-step sync: no extra collective unless a rank has news.

Every scheduler iteration SGLang all-gathers one small int row per rank before the forward
(``dp_attn.MLPSyncBatchInfo.all_gather``: token counts, graph votes, the forward mode). The
hooks here append one column to that row, this rank's *news flag*, and read every rank's flag
and forward mode back from the gathered table (``tp0_info_cpu``), so all ranks learn together,
at no extra collective, whether any rank has news.

News is what no other rank can predict:

- a request's KV was released (its guests must free their slots);
- shard moves (a split request decodes for the first time after its prefill);
- this rank's split requests decode differently from the prediction.

The **prediction**, made identically on every rank: a rank whose forward mode this step is
DECODE decodes the same split requests it decoded at its previous decode step, each one token
longer (each decode step adds one token; no speculative decoding with sharding); a rank in any
other mode decodes none. A home compares what it will really decode with that prediction and
raises its flag on any difference (a new, finished, retracted or not-yet-running request).

If any flag is up, every rank sends its news in one ``all_gather_object`` (pickled tuples,
``step.RankNews.to_wire``) and the predictions restart from it; otherwise nothing more is sent.
In steady decoding of split requests the header costs no collective beyond SGLang's own.
"""

from __future__ import annotations

from typing import Any

from sglang_dcp.sglang.rank_stats import stats
from sglang_dcp.sglang.step import Decoding, RankNews, StepPlan

FLAG_FILL = 0  # a rank outside the gather (SGLang's fallback row) has no news


def advance(d: Decoding) -> Decoding:
    """``d`` one decode step later: the home's tail (the last shard) one token longer."""
    *sealed, (r, a, b) = d.shards
    return Decoding(d.rid, d.home, (*sealed, (r, a, b + 1)))


class StepHeader:
    """One rank's view of what every rank decodes (``last[r]``: rank r's split requests at its
    previous decode step, as the step plan ran them) and its news flag for SGLang's gather."""

    def __init__(self, rank: int, num_ranks: int) -> None:
        self.rank, self.num_ranks = rank, num_ranks
        self.last: list[tuple[Decoding, ...]] = [()] * num_ranks
        self.flag = 0  # this rank's news flag, appended to SGLang's row
        self.gathered: Any = None  # SGLang's gathered table ([ranks, width] CPU int64)

    def predicted(self, rank: int) -> tuple[Decoding, ...]:
        return tuple(advance(d) for d in self.last[rank])

    def set_news(self, news: RankNews, decoding_here: bool) -> None:
        """Raise the flag if ``news`` holds anything the other ranks cannot predict."""
        mine = tuple(news.decoding) if decoding_here else ()
        expect = self.predicted(self.rank) if decoding_here else ()
        self.flag = int(bool(news.moves or news.releases or news.extending or news.after)
                        or mine != expect)  # fmt: skip

    def any_news(self) -> bool:
        """Whether any rank raised its flag this step (read from SGLang's gathered table; with
        no table, e.g. SGLang skipped its gather, assume news: always safe, never wrong)."""
        t = self.gathered
        return True if t is None else bool(t[:, -1].max())

    def predicted_news(self, decode_mode: int) -> list[RankNews]:
        """Every rank's news when nobody raised a flag: its predicted decoding (DECODE-mode
        ranks only), no moves, no releases."""
        modes = self.gathered[:, 5].tolist()  # MLPSyncBatchInfo column 5: local_forward_mode
        return [
            RankNews(decoding=list(self.predicted(r)) if modes[r] == decode_mode else [])
            for r in range(self.num_ranks)
        ]

    def remember(self, plan: StepPlan, decoded: list[bool]) -> None:
        """After the step plan: what each DECODE-mode rank decoded (moves applied, failed ones
        at home), the base of the next predictions."""
        by_home: list[list[Decoding]] = [[] for _ in range(self.num_ranks)]
        for p in plan.placements:
            by_home[p.home_rank].append(
                Decoding(p.rid, p.home_rank, tuple((s.rank, s.start, s.end) for s in p.shards))
            )
        for r in range(self.num_ranks):
            if decoded[r]:
                self.last[r] = tuple(by_home[r])

    def count(self, gathered: bool) -> None:
        s = stats()
        s.header_steps += 1
        s.header_gathers += int(gathered)


# ---- hooks on SGLang's MLP-sync row (hooks.py) --------------------------------------------------


def _header():
    from sglang_dcp.sglang.datapath import runtime

    rt = runtime()
    return None if rt is None else rt.header_state


def after_get_local_tensor(result, self, *args, **kwargs):
    """``MLPSyncBatchInfo._get_local_tensor(device, dtype)`` (dp_attn.py:128): this rank's row,
    plus its news flag."""
    h = _header()
    return _append(result, h.flag if h is not None else FLAG_FILL)


def after_get_fallback_tensor(result, self, *args, **kwargs):
    """``MLPSyncBatchInfo._get_fallback_tensor(device, dtype)`` (dp_attn.py:145): the row of a
    rank outside the gather, plus a lowered flag (the widths must agree)."""
    return _append(result, FLAG_FILL)


def after_all_gather(result, self, *args, **kwargs):
    """``MLPSyncBatchInfo.all_gather(device, group, use_all_reduce)`` (dp_attn.py:175): keep the
    gathered table (every rank's flag and forward mode) for the header."""
    h = _header()
    if h is not None:
        h.gathered = self.tp0_info_cpu
    return result


def _append(row, flag: int):
    import torch

    return torch.cat([row, row.new_tensor([flag])])
