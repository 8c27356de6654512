"""Shared pytest setup.

TRITON_INTERPRET must be set before any module defining ``@triton.jit`` kernels is imported
(Triton reads it at decoration time), so it is set here, first, when no CUDA device exists.
"""

import os

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pure-logic suites can run without torch
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

pytest_plugins = ["sglang_dcp.testing.pytest_plugin"]
