"""Prefill into shards in the planner (issue 18): a request that fits the cluster but no rank is
admitted with the home's prefill transient booked; one larger than the cluster never fits."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_dcp.planner import ClusterSpec, load_profile, make_policy
from sglang_dcp.planner.prefill import prefill_transient
from sglang_dcp.types import Placement, Rejection, Request

PROFILE = load_profile("qwen3-235b-h200")


def _page_up(n, page):
    return -(-n // page) * page


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 8),
    page=st.sampled_from([1, 16, 64]),
    cap_pages=st.integers(64, 400),
    chunk_pages=st.integers(1, 16),
    frac=st.floats(1.0, 9.0),  # up to past the whole cluster
    new_frac=st.floats(0.0, 0.25),
    rule=st.sampled_from(["fit", "gain"]),
)
def test_larger_than_a_rank_is_admitted_with_the_transient(
    n, page, cap_pages, chunk_pages, frac, new_frac, rule
):
    cap, chunk = cap_pages * page, chunk_pages * page
    pol = make_policy("dcp", ClusterSpec.uniform(n, cap, page), PROFILE, max_degree=n,
                      min_shard_tokens=page, prefill_chunk=chunk, split_rule=rule)
    prompt, new = int(cap * frac), int(cap * new_frac)  # more than any rank holds
    r = Request("x", prompt, new)
    resv, pfull = _page_up(prompt + new, page), (prompt // page) * page
    bound = prefill_transient(prompt, resv, pfull, chunk, page)
    never = pol.never_fits(r)
    got = pol.admit(r)
    # fits the cluster with the transient (and a page of rounding per rank)
    if resv + bound + page * n <= n * cap and resv - pfull + bound <= cap:
        assert never is None, never
        assert isinstance(got, Placement), got
    if isinstance(got, Placement):
        assert never is None
        home = got.home_rank
        sealed = sum(s.num_tokens for s in got.shards if s.rank != home)
        ts = got.shards[-1].start
        books = pol.kv_tokens()[home]
        # the home's peak while prefilling into shards: its own prompt pages + one chunk
        peak = _page_up(prompt - ts, page) + _page_up(min(chunk, sealed), page)
        assert books >= max(peak, resv - ts) and books <= cap
        if prompt > cap:
            assert sealed > 0  # a prompt larger than a rank is never whole on one
        pol.verify()
        assert pol.prefill_done("x") == (books > resv - ts)
        assert pol.kv_tokens()[home] == resv - ts and not pol.prefill_done("x")
        pol.verify()
        pol.finish("x")
        assert pol.kv_tokens() == [0] * n
    else:
        assert never is not None and not got.retryable and got.reason == never.reason


def test_larger_than_the_cluster_is_rejected_for_good():
    pol = make_policy("dcp", ClusterSpec.uniform(4, 1024, 16), PROFILE, min_shard_tokens=16,
                      prefill_chunk=256)
    r = Request("big", 4 * 1024, 16)
    never = pol.never_fits(r)
    got = pol.admit(r)
    assert isinstance(never, Rejection) and not never.retryable
    assert isinstance(got, Rejection) and got.reason == never.reason
    assert "while its prefill passes a chunk through" in got.reason
    assert "even when empty" in got.reason


def test_the_transient_can_decide_admission():
    """3 x 1024 tokens, page 16: 2900 + 16 fits the cluster only without a chunk to pass through
    the home; with a chunk of 256 the home needs that much more room."""
    spec = ClusterSpec.uniform(3, 1024, 16)
    r = Request("r", 2900, 16)
    plain = make_policy("dcp", spec, PROFILE, min_shard_tokens=16)
    chunked = make_policy("dcp", spec, PROFILE, min_shard_tokens=16, prefill_chunk=256)
    assert isinstance(plain.admit(r), Placement)
    assert chunked.never_fits(r) is not None and isinstance(chunked.admit(r), Rejection)
    small = make_policy("dcp", spec, PROFILE, min_shard_tokens=16, prefill_chunk=64)
    assert isinstance(small.admit(r), Placement)


def test_unsplit_requests_book_no_transient():
    pol = make_policy("dcp", ClusterSpec.uniform(4, 4096, 16), PROFILE, prefill_chunk=1024)
    got = pol.admit(Request("s", 1000, 100))
    assert isinstance(got, Placement) and got.degree == 1
    assert sum(pol.kv_tokens()) == _page_up(1100, 16) and not pol.prefill_done("s")


def test_transient_formula():
    # decode room covers part of the chunk: 1000 prompt + 300 new, chunk 512, page 64
    assert prefill_transient(1000, 1344, 768, 512, 64) == 1024 + 512 - 1344
    assert prefill_transient(1000, 1344, 0, 512, 64) == 0  # nothing leaves the home
    assert prefill_transient(1000, 2048, 768, 512, 64) == 0  # max_new covers the chunk
    assert prefill_transient(1000, 1024, 128, 512, 64) == 128  # chunk capped by what leaves


@pytest.mark.parametrize("bad", [0, -64])
def test_prefill_chunk_must_be_positive(bad):
    with pytest.raises(ValueError, match="prefill_chunk"):
        make_policy("dcp", ClusterSpec.uniform(2, 1024, 16), PROFILE, prefill_chunk=bad)
