"""What every CPU benchmark report records about where it ran: the CPU and the git commit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_hardware() -> str:
    """``<model name>, <n> cores`` from ``lscpu`` (``platform.processor()`` without it)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} cores"
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"


def git_commit(short: bool = False) -> str:
    """This checkout's HEAD (``unknown (no commit yet)`` outside git or before a commit)."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no commit yet)"
