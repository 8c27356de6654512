"""The step header's news gather (``header.gather_news``) on 3 gloo ranks: flagged ranks send
fixed-size int64 records (``exchange/wire.py``), an unflagged rank sends nothing and every rank
substitutes its prediction; without SGLang's table every rank sends its record."""

import json

import pytest
from _workers import news_gather_worker

from sglang_dcp.exchange.spawn import run_ranks

W = 3
EXPECTED = [
    [[["a/é", 0, 2, 0, 128]], ["gone"], [["a/é", 0, [[2, 0, 128], [0, 128, 131]]]]],
    [[], [], [["b-1", 1, [[2, 0, 64], [1, 64, 71]]]]],
    [[], ["x" * 100], []],
]


@pytest.mark.parametrize("with_table", [True, False], ids=["table", "no-table"])
def test_every_rank_gathers_the_same_news(tmp_path, with_table):
    out = str(tmp_path / "rank{rank}.json")
    run_ranks(news_gather_worker, W, out, with_table, timeout_s=120)
    res = [json.load(open(out.format(rank=r))) for r in range(W)]
    assert [r["flag"] for r in res] == [1, 0, 1]
    assert res[1]["words"] == 0  # an unflagged rank encodes nothing
    for r in res:
        assert r["news"] == EXPECTED
