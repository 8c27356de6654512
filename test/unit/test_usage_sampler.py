"""``testing.usage.KvUsageSampler`` (the e2e tests' ``/v1/loads`` sampler) over a fake server."""

from __future__ import annotations

import itertools
import time

from sglang_dcp.testing.usage import KvUsageSampler


def test_peaks_per_rank_and_most_ranks_at_once():
    seq = itertools.cycle([[0, 5, 0, 0], [3, 9, 2, 0], [0, 0, 0, 0]])

    class Server:
        def get(self, path):
            assert path == "/v1/loads"
            return {"loads": [{"dp_rank": r, "num_used_tokens": u}
                              for r, u in enumerate(next(seq))]}  # fmt: skip

    with KvUsageSampler(Server(), 4, interval_s=0.001) as s:
        time.sleep(0.1)
    assert s.peak == [3, 9, 2, 0] and s.most_ranks == 3
    assert not s.thread.is_alive()
