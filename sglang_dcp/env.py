"""Every environment variable sglang-dcp reads, in one place (prefix ``SGLANG_DCP_``)."""

from __future__ import annotations

import os


def cache_dir() -> str:
    """Where generated artifacts (the demo's tiny model) live. ``SGLANG_DCP_CACHE_DIR``."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "sglang_dcp")
    return os.environ.get("SGLANG_DCP_CACHE_DIR", default)


def trace_dir() -> str | None:
    """Directory holding the Mooncake traces, if set. ``SGLANG_DCP_TRACE_DIR``."""
    return os.environ.get("SGLANG_DCP_TRACE_DIR") or None
