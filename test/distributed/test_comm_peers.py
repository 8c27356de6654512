"""The node-scoped all-to-all (``Communicator.all_to_all_peers``) over real gloo ranks: each
rank swaps chunks with its node's ranks only (2 per node); the other node's chunks are not
written."""

import json

from _workers import peers_a2a_worker

from sglang_dcp.exchange.spawn import run_ranks

W = 4


def test_ranks_swap_chunks_within_their_node_only(tmp_path):
    out = str(tmp_path / "rank{rank}.json")
    run_ranks(peers_a2a_worker, W, out, timeout_s=120)
    for r in range(W):
        got = json.load(open(out.format(rank=r)))
        node = range(r - r % 2, r - r % 2 + 2)
        for p in range(W):
            want = [100 * p + 3 * r + i for i in range(3)] if p in node else [None] * 3
            assert got[p] == want, (r, p, got[p])
