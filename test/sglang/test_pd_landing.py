"""PD landing in shards (issue 24), the parts that need no server: each destination's position
list, the ranks of a placement, and the prefill side's send of only a destination's positions
(the end-to-end run is ``test/e2e/test_pd.py``)."""

from __future__ import annotations

import numpy as np

from sglang_dcp.sglang import pd_landing
from sglang_dcp.types import Placement, Shard

# 1224 tokens: [0, 512) on rank 1, [512, 1024) on rank 2, the tail on its home, rank 0
P = Placement("r", 0, (Shard(1, 0, 512), Shard(2, 512, 1024), Shard(0, 1024, 1232)))


def test_each_rank_gets_its_ranges_and_the_home_the_tail():
    assert pd_landing.ranges_of(P, 1) == [(0, 512)]
    assert pd_landing.ranges_of(P, 2) == [(512, 1024)]
    assert pd_landing.ranges_of(P, 0) == [(1024, 1232)]
    assert pd_landing.ranges_of(P, 3) == []
    assert pd_landing.num_destinations(P) == 3


def test_a_destination_list_has_slots_at_its_ranges_and_minus_one_elsewhere():
    dst = pd_landing.destinations(10, [(2, 4), (7, 8)], [50, 51, 90])
    assert dst.dtype == np.int32
    assert dst.tolist() == [-1, -1, 50, 51, -1, -1, -1, 90, -1, -1]


def _send(prefill, dst):
    seen = []

    def original(self, session, src, ptrs, dst_idx, executor, *args, **kwargs):
        seen.append((src.tolist(), dst_idx.tolist()))
        return 0

    rc = pd_landing.around_send_kvcache(original, None, "s", np.array(prefill, np.int32), [1],
                                        np.array(dst, np.int32), None)  # fmt: skip
    return rc, seen


def test_the_prefill_sends_a_destination_only_its_positions():
    assert _send([10, 11, 12, 13], [-1, 7, 8, -1]) == (0, [([11, 12], [7, 8])])
    assert _send([10, 11], [5, 6]) == (0, [([10, 11], [5, 6])])  # a whole destination: as is
    assert _send([10, 11], [-1, -1]) == (0, [])  # none of this chunk is its: nothing sent
