"""The radix-cache glue (sglang/radix.py, issue 26): split requests never insert on their home
and match its tree only at their first prefill (tree_prefix.py); other requests reach SGLang
untouched. Without a server (the e2e side is test/e2e/test_prefix_cache.py)."""

from types import SimpleNamespace

import pytest
import torch

from sglang_dcp.sglang import context, radix, sched_hooks


@pytest.fixture
def rt():
    runtime = SimpleNamespace(split_reqs={}, home={}, released=lambda req: None)
    old = context.use(context.RankContext(runtime=runtime))
    yield runtime
    context.use(old)


def _req(rid, idx=0, end=5):
    return SimpleNamespace(rid=rid, kv=SimpleNamespace(req_pool_idx=idx),
                           extend_range=SimpleNamespace(end=end), prefix_indices=None)


def test_a_split_request_matches_only_at_its_first_prefill_off_pieces(rt):
    split, plain = _req("split"), _req("plain")
    rt.split_reqs["split"] = split
    original = lambda self, n: n - 1  # noqa: E731  (SGLang: at most input_len - 1)
    assert radix.around_compute_max_prefix_len(original, split, 100) == 99  # tree_prefix.py
    assert radix.around_compute_max_prefix_len(original, plain, 100) == 99
    rt.adoptions = {"split": object()}  # placed on cached pieces: its prefix is theirs
    assert radix.around_compute_max_prefix_len(original, split, 100) == 0
    rt.adoptions = {}
    rt.home["split"] = object()  # started (its first header seen): never again
    assert radix.around_compute_max_prefix_len(original, split, 100) == 0
    del rt.home["split"]
    split.is_retracted = True
    assert radix.around_compute_max_prefix_len(original, split, 100) == 0
    assert radix.around_compute_max_prefix_len(original, plain, 100) == 99
    # another object with the same rid (a new request reusing it) is not the split one
    assert radix.around_compute_max_prefix_len(original, _req("split"), 100) == 99


def test_a_split_requests_prefill_stays_out_of_the_tree(rt):
    row = torch.arange(40, dtype=torch.int32).reshape(2, 20)
    tree = SimpleNamespace(req_to_token_pool=SimpleNamespace(req_to_token=row))
    split = _req("split", idx=1, end=7)
    rt.split_reqs["split"] = split
    calls = []
    original = lambda req, tree_cache, **kw: calls.append(req.rid)  # noqa: E731
    radix.around_maybe_cache_unfinished_req(original, split, tree, chunked=True)
    assert calls == []  # the tree was not asked
    assert split.prefix_indices.dtype == torch.int64
    assert split.prefix_indices.tolist() == list(range(20, 27))
    split.prefix_indices[0] = -1  # a copy: the row is untouched
    assert int(row[1, 0]) == 20
    radix.around_maybe_cache_unfinished_req(original, _req("plain"), tree)
    assert calls == ["plain"]


def test_a_split_request_is_released_without_insert(rt):
    split = _req("split", idx=3)
    rt.split_reqs["split"] = split
    released = []
    rt.released = released.append
    seen = []
    original = lambda req, tree_cache, is_insert=True: seen.append((req.rid, is_insert))  # noqa
    sched_hooks.around_release_kv_cache(original, split, None)
    sched_hooks.around_release_kv_cache(original, split, None, True)
    sched_hooks.around_release_kv_cache(original, _req("plain"), None)
    assert seen == [("split", False), ("split", False), ("plain", True)]
    assert released == [split, split]  # the runtime drops its entry (and the rows it skips)


def test_the_home_row_skips_its_layouts_away_and_kept_ranges():
    """``RankRuntime.row_ranges_to_skip`` (SGLang's ``free_kv_row``) reads the home entry's
    layout: the ranges away and those kept as pieces, nothing for another row."""
    from sglang_dcp.sglang.datapath import RankRuntime
    from sglang_dcp.sglang.entries import HomeEntry
    from sglang_dcp.sglang.layout import KvLayout
    from sglang_dcp.types import Placement, Shard

    p = Placement("s", 0, (Shard(1, 0, 64), Shard(0, 64, 200)))
    rt = object.__new__(RankRuntime)
    req = SimpleNamespace(rid="s", dcp=p, kv=SimpleNamespace(req_pool_idx=3))
    rt.home = {"s": HomeEntry(req, KvLayout.of(p, [(1, 0, 64)]).with_kept([(64, 128)]))}
    assert rt.row_ranges_to_skip(3) == [(0, 64), (64, 128)]
    assert rt.row_ranges_to_skip(4) is None
    rt.home["s"].layout = KvLayout.of(p)  # nothing away, nothing kept
    assert rt.row_ranges_to_skip(3) is None
