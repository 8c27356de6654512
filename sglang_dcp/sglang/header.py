"""The DCP step header on SGLang's own per-step sync: no extra collective unless a rank has news.

Every scheduler iteration SGLang all-gathers one small int row per rank before the forward
(``dp_attn.MLPSyncBatchInfo.all_gather``: token counts, graph votes, the forward mode). The
hooks here append two columns to that row, this rank's *news flag* and the length of its news
record (int64 words, ``exchange/wire.py`` §3), and read every rank's flag, length and forward
mode back from the gathered table (``tp0_info_cpu``), so all ranks learn together, at no extra
collective, whether any rank has news.

News is what no other rank can predict:

- a request's KV was released (its guests must free their slots);
- shard moves (a split request decodes for the first time after its prefill);
- this rank's split requests decode differently from the prediction.

The **prediction**, made identically on every rank: a rank whose forward mode this step is
DECODE decodes the same split requests it decoded at its previous decode step, each one token
longer (each decode step adds one token; no speculative decoding with sharding); a rank in any
other mode decodes none. A home compares what it will really decode with that prediction and
raises its flag on any difference (a new, finished, retracted or not-yet-running request).

If any flag is up, the ranks run one all-gather of int64 words, padded to the longest length in
the table (no pickling, no size exchange): a flagged rank sends its news record, any other rank
an empty one (its news is the prediction, which every rank computes itself); the predictions
restart from the result. Otherwise nothing more is sent. Only flagged ranks encode a record.
In steady decoding of split requests the header costs no collective beyond SGLang's own.
"""

from __future__ import annotations

from typing import Any

from sglang_dcp.sglang.context import stats
from sglang_dcp.sglang.step import Decoding, RankNews, StepPlan

FLAG_FILL = 0  # a rank outside the gather (SGLang's fallback row) has no news
FLAG_COL, WORDS_COL = -2, -1  # the columns appended to SGLang's row


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
        self.words: list[int] = []  # this rank's news record when flagged (length appended too)
        self.gathered: Any = None  # SGLang's gathered table ([ranks, width] CPU int64)

    def predicted(self, rank: int) -> tuple[Decoding, ...]:
        return tuple(advance(d) for d in self.last[rank])

    def set_news(self, news: RankNews, decoding_here: bool) -> None:
        """Raise the flag if ``news`` holds anything the other ranks cannot predict."""
        mine = tuple(news.decoding) if decoding_here else ()
        expect = self.predicted(self.rank) if decoding_here else ()
        self.flag = int(bool(news.moves or news.releases or news.extending or news.after)
                        or mine != expect)  # fmt: skip
        self.words = news.to_words() if self.flag else []

    def any_news(self) -> bool:
        """Whether any rank raised its flag this step (read from SGLang's gathered table; with
        no table, e.g. SGLang skipped its gather, assume news: always safe, never wrong)."""
        t = self.gathered
        return True if t is None else bool(t[:, FLAG_COL].max())

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


def gather_news(hs: StepHeader, news: RankNews, decode_mode: int, group) -> list[RankNews]:
    """Every rank's news, in a step where some rank raised its flag: one all-gather of int64
    words over ``group`` (the TP group's CPU group). With SGLang's table, flagged ranks send
    their record (padded to the table's longest) and the others' news is their prediction;
    without it (SGLang skipped its gather) every rank sends its record, after one more tiny
    collective for the lengths."""
    import torch
    import torch.distributed as dist

    n = dist.get_world_size(group)
    t = hs.gathered
    if t is None:
        words = news.to_words()
        lens = [torch.zeros(1, dtype=torch.int64) for _ in range(n)]
        dist.all_gather(lens, torch.tensor([len(words)], dtype=torch.int64), group=group)
        longest, flagged = max(int(x) for x in lens), [True] * n
    else:
        words, longest = hs.words, int(t[:, WORDS_COL].max())
        flagged = [bool(f) for f in t[:, FLAG_COL].tolist()]
    mine = torch.zeros(longest, dtype=torch.int64)
    mine[: len(words)] = torch.tensor(words, dtype=torch.int64)
    out = [torch.empty(longest, dtype=torch.int64) for _ in range(n)]
    dist.all_gather(out, mine, group=group)
    predicted = hs.predicted_news(decode_mode) if t is not None else None
    return [RankNews.from_words(out[r].tolist()) if flagged[r] else predicted[r] for r in range(n)]


# ---- hooks on SGLang's MLP-sync row (hooks.py) --------------------------------------------------


def _header():
    from sglang_dcp.sglang.context import ctx

    rt = ctx().runtime
    return None if rt is None else rt.header_state


def after_get_local_tensor(result, self, *args, **kwargs):
    """``MLPSyncBatchInfo._get_local_tensor(device, dtype)`` (dp_attn.py:128): this rank's row,
    plus its news flag."""
    h = _header()
    if h is None:
        return _append(result, FLAG_FILL, 0)
    return _append(result, h.flag, len(h.words))


def after_get_fallback_tensor(result, self, *args, **kwargs):
    """``MLPSyncBatchInfo._get_fallback_tensor(device, dtype)`` (dp_attn.py:145): the row of a
    rank outside the gather, plus a lowered flag and no record (the widths must agree)."""
    return _append(result, FLAG_FILL, 0)


def after_all_gather(result, self, *args, **kwargs):
    """``MLPSyncBatchInfo.all_gather(device, group, use_all_reduce)`` (dp_attn.py:175): keep the
    gathered table (every rank's flag and forward mode) for the header."""
    h = _header()
    if h is not None:
        h.gathered = self.tp0_info_cpu
    return result


def _append(row, flag: int, words: int):
    import torch

    return torch.cat([row, row.new_tensor([flag, words])])
