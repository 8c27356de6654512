"""``DcpAttnBackend`` driven through SGLang 0.5.21's eager and decode-CUDA-graph call sequences on
3 gloo ranks (``sglang_dcp.testing.graph_harness``): changing routes, splits, finishes and
padding over 20 steps; eager and graph replay both equal the float64 reference, with moved KV
poisoned at its source; no static buffer ever moves; steps that need rounds run eagerly."""

import json
import os

from sglang_dcp.exchange.spawn import run_ranks
from sglang_dcp.testing import graph_harness

W = 3


def test_eager_and_graph_replay_equal_the_reference(tmp_path):
    out = str(tmp_path / "rank{rank}.json")
    _run(20, 11, 1, out)
    _check(out)


def test_an_fp8_cache_goes_through_the_exchange_with_its_scales(tmp_path):
    """--kv-cache-dtype fp8_e4m3: the exchange dequantises with the layers' scales, as SGLang's
    own attention does for unsplit rows (the reference reads the values the cache holds)."""
    out = str(tmp_path / "rank{rank}.json")
    _run(12, 5, 4, out, "fp8_e4m3")  # capacity 4: buckets 1, 2 and 4, one graph variant each
    _check(out, min_dcp=3, rounds=False)
    c = json.load(open(out.format(rank=0)))["counts"]
    assert len(c["dcp_buckets"]) >= 2, c  # steps replayed at different buckets


def test_node_scoped_steps_replay_their_own_variants(tmp_path):
    """Two nodes of 2 ranks whose split requests keep their shards on their home's node: every
    split step replays a ``dcp<c>n`` variant, whose all-to-alls run within the node only, and
    equals the reference."""
    out = str(tmp_path / "rank{rank}.json")
    _run(6, 7, 2, out, "float32", 2, world=4)
    _check(out, min_dcp=3, rounds=False, world=4, min_rows=5)
    c = json.load(open(out.format(rank=0)))["counts"]
    assert c["graph_node"] == c["graph_dcp"] >= 3, c


def _run(steps, seed, capacity, out, *extra, world=W):
    """The ranks; a failure names every rank's own traceback (one rank's exception often
    surfaces as a peer's SIGABRT in gloo)."""
    try:
        run_ranks(graph_harness.run_rank, world, steps, seed, capacity, out, *extra,
                  timeout_s=500)
    except Exception as e:
        errs = [out.format(rank=r) + ".err" for r in range(world)]
        found = {p: open(p).read()[-3000:] for p in errs if os.path.exists(p)}
        raise AssertionError(f"{e}\nrank tracebacks: {found or 'none written'}") from e


def _check(out, min_dcp=5, rounds=True, world=W, min_rows=10):
    res = [json.load(open(out.format(rank=r))) for r in range(world)]
    for r in res:
        assert r["worst"]["eager"] < 1e-4 and r["worst"]["graph"] < 1e-4, r
    c = res[0]["counts"]
    assert c["graph_dcp"] >= min_dcp and c["graph_plain"] >= 1, c  # both variants replayed
    assert sum(x["counts"]["split_rows"] for x in res) >= min_rows
    if rounds:
        assert c["eager_rounds"] >= 1, c  # over capacity (1): eager rounds, never truncated
