"""What the event loop records about its decode steps: the imbalance averages and the series.

``metrics.py`` defines the figures (time-weighted max/mean of KV and batch per rank, over every
step and over the *loaded window*, the steps that start before the last arrival); this object
accumulates them chunk by chunk as ``engine.simulate`` fast-forwards, and keeps the time series
(KV share per rank, every step's time) when the run records them.
"""

from __future__ import annotations

import numpy as np

from sglang_dcp.sim.metrics import Series, TimeWeighted, imbalance


class StepStats:
    def __init__(self, arrival_ms: np.ndarray, kv_capacity, record: bool, record_points: int):
        n = len(arrival_ms)
        self.kv_run, self.batch_run = TimeWeighted(), TimeWeighted()  # every decode step
        self.kv_win, self.batch_win = TimeWeighted(), TimeWeighted()  # before the last arrival
        self.window_end = float(arrival_ms.max()) if n else 0.0
        self.series = Series() if record else None
        self.cap = np.maximum(np.asarray(kv_capacity, dtype=np.float64), 1.0)
        self.record_dt = float(arrival_ms.max() - arrival_ms.min()) / record_points if n else 0.0
        self.last_record = -np.inf

    def idle(self, t: float, written: np.ndarray) -> None:
        """The cluster goes idle at ``t``: close the busy period in the KV plot."""
        if self.series is not None:
            self.series.t_ms.append(t)
            self.series.kv_frac.append((written / self.cap).astype(np.float32))

    def chunk(self, t: float, kv: np.ndarray, st: np.ndarray, cum: np.ndarray, k: int,
              batch_imbalance: float, written: np.ndarray) -> None:
        """Steps ``[0, k)`` of a chunk starting at ``t``: ``kv [>= k, num_ranks]`` each step's
        KV per rank, ``st`` their times, ``cum`` the running sum of ``st``; the batch (and so its
        imbalance) is fixed over a chunk; ``written`` is the KV before the chunk."""
        kv_k = imbalance(kv[:k])
        self.kv_run.add(kv_k, st[:k])
        self.batch_run.add(batch_imbalance, cum[k - 1])
        if t < self.window_end:  # steps that start while requests are still arriving
            w_k = np.where(t + cum[:k] - st[:k] < self.window_end, st[:k], 0.0)
            self.kv_win.add(kv_k, w_k)
            self.batch_win.add(batch_imbalance, float(w_k.sum()))
        if self.series is not None:
            self.series.step_ms.append(st[:k].astype(np.float32))
            if t - self.last_record >= self.record_dt:
                self.series.t_ms.append(t)
                self.series.kv_frac.append((written / self.cap).astype(np.float32))
                self.last_record = t

    def figures(self) -> dict:
        """``RunResult``'s imbalance fields and series."""
        return {"kv_imbalance": self.kv_win.value, "batch_imbalance": self.batch_win.value,
                "kv_imbalance_run": self.kv_run.value,
                "batch_imbalance_run": self.batch_run.value, "series": self.series}
