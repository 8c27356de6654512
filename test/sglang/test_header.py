"""The step header on SGLang's sync (``header.py``): a flag only for what other ranks cannot
predict, the same predictions on every rank, and the flag column on SGLang's row."""

from types import SimpleNamespace

import torch

from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang import header
from sglang_dcp.sglang.header import StepHeader, advance
from sglang_dcp.sglang.step import Decoding, RankNews, plan_step

DECODE, EXTEND, IDLE = 2, 1, 0  # column 5 values (any distinct ints work)


def D(rid, home, *shards):
    return Decoding(rid, home, tuple(shards))


def table(modes, flags=None, words=None):
    """SGLang's gathered table (9 columns) plus the header's flag and record-length columns."""
    t = torch.zeros(len(modes), 11, dtype=torch.int64)
    t[:, 5] = torch.tensor(modes)
    t[:, -2] = torch.tensor(flags or [0] * len(modes))
    t[:, -1] = torch.tensor(words or [0] * len(modes))
    return t


def test_steady_decoding_needs_no_news_and_every_rank_predicts_the_same():
    a = D("a", 0, (1, 0, 64), (0, 64, 100))
    b = D("b", 1, (0, 0, 64), (1, 64, 70))
    ranks = [StepHeader(r, 2) for r in range(2)]
    # step 1: first decode of a and b: moves -> flags up, every rank gathers the news
    news = [RankNews(moves=[Migration("a", 0, 1, 0, 64)], decoding=[a]),
            RankNews(moves=[Migration("b", 1, 0, 0, 64)], decoding=[b])]  # fmt: skip
    for h, n in zip(ranks, news):
        h.set_news(n, decoding_here=True)
        assert h.flag == 1
    plan = plan_step(news, [])
    for h in ranks:
        h.remember(plan, [True, True])
    # step 2: both decode one token more, rank 1 runs an extend batch instead
    a2 = advance(a)
    assert a2.shards[-1] == (0, 64, 101)
    ranks[0].set_news(RankNews(decoding=[a2]), decoding_here=True)
    ranks[1].set_news(RankNews(), decoding_here=False)
    assert ranks[0].flag == ranks[1].flag == 0
    for h in ranks:
        h.gathered = table([DECODE, EXTEND])
        assert not h.any_news()
        got = h.predicted_news(DECODE)
        assert [n.decoding for n in got] == [[a2], []]
        h.remember(plan_step(got, []), [True, False])
    # step 3: rank 1 decodes again: b advances from its last decode, not twice
    ranks[1].set_news(RankNews(decoding=[advance(b)]), decoding_here=True)
    assert ranks[1].flag == 0
    # a request that finished (missing), a new one, a release: flags up
    ranks[0].set_news(RankNews(decoding=[]), decoding_here=True)
    assert ranks[0].flag == 1
    ranks[0].set_news(RankNews(decoding=[advance(a2), D("c", 0, (0, 0, 5))]), decoding_here=True)
    assert ranks[0].flag == 1
    ranks[0].set_news(RankNews(releases=["a"]), decoding_here=False)
    assert ranks[0].flag == 1


def test_a_failed_move_is_remembered_at_home():
    a = D("a", 0, (1, 0, 64), (0, 64, 100))
    news = [RankNews(moves=[Migration("a", 0, 1, 0, 64)], decoding=[a]), RankNews()]
    h = StepHeader(0, 2)
    h.remember(plan_step(news, [Migration("a", 0, 1, 0, 64)]), [True, False])
    assert h.predicted(0) == (D("a", 0, (0, 0, 101)),)  # merged, as the home's next news


def test_no_table_means_news():
    h = StepHeader(0, 2)
    assert h.any_news()  # SGLang skipped its gather: gathering is always safe
    h.gathered = table([DECODE, DECODE], [0, 1], [0, 17])
    assert h.any_news()


def test_the_flag_rides_on_sglangs_row(monkeypatch):
    h = StepHeader(0, 2)
    h.set_news(RankNews(releases=["a"]), decoding_here=False)
    monkeypatch.setattr(header, "_header", lambda: h)
    row = torch.tensor([5, 5, 1, 0, 1, 2, 0, 0, 1])
    got = header.after_get_local_tensor(row, None).tolist()
    assert got == [*row.tolist(), 1, len(h.words)] and len(h.words) > 6
    assert header.after_get_fallback_tensor(row, None).tolist() == [*row.tolist(), 0, 0]
    info = SimpleNamespace(tp0_info_cpu=table([DECODE, IDLE], [1, 0]))
    assert header.after_all_gather("ret", info) == "ret" and h.gathered is info.tp0_info_cpu
