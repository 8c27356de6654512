"""Fixtures for the kernel suite."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture
def poison(monkeypatch):
    """Every ``torch.empty`` in the test returns NaN (floats) / a huge value (ints), so an output
    element the kernel forgets to write shows up instead of passing on leftover memory."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(math.nan)
        elif t.dtype in (torch.int32, torch.int64):
            # an unwritten segment bound must not turn into an out-of-bounds read: 0 makes the
            # segment empty, so the output it should have filled stays NaN and fails the test
            t.fill_(0)
        return t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    return poisoned_empty
