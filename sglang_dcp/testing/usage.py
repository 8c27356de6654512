"""A server's ``/v1/loads`` sampled in a thread while requests run (e2e tests): each DP rank's
highest used KV tokens and the most ranks holding KV at once."""

from __future__ import annotations

import threading
import time


class KvUsageSampler:
    """``with KvUsageSampler(server, ranks) as s: ...``; then ``s.peak[r]`` (the most KV tokens
    rank ``r`` used at a sample) and ``s.most_ranks`` (the most ranks with KV at one sample).
    ``server.get(path)`` returns the decoded JSON of ``GET path``."""

    def __init__(self, server, ranks: int, interval_s: float = 0.05) -> None:
        self.server, self.interval_s = server, interval_s
        self.peak, self.most_ranks = [0] * ranks, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            loads = self.server.get("/v1/loads")["loads"]
            used = {x["dp_rank"]: x["num_used_tokens"] for x in loads}
            for r, u in used.items():
                self.peak[r] = max(self.peak[r], u)
            self.most_ranks = max(self.most_ranks, sum(1 for u in used.values() if u > 0))
            time.sleep(self.interval_s)

    def __enter__(self) -> "KvUsageSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
