"""The environment a simulator run records in its ``summary.json`` (``env``)."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys


def environment() -> dict:
    """Where and how this run ran: commit, CPU, Python, UTC date, the command line."""
    def sh(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = None
    for line in (sh("lscpu") or "").splitlines():
        if line.startswith("Model name:"):
            cpu = line.split(":", 1)[1].strip()
    return {
        "commit": sh("git", "rev-parse", "HEAD"),
        "cpu": cpu or platform.processor() or None,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m sglang_dcp.sim", *sys.argv[1:]]),
    }
