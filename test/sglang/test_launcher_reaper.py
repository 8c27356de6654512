"""The launcher inherits orphaned descendants (so SGLang's crash handler can kill them)."""

import subprocess
import sys

import pytest

SCRIPT = r"""
import os, sys, time
from sglang_dcp.sglang.launch import become_subreaper
assert become_subreaper()
me = os.getpid()
r, w = os.pipe()
if os.fork() == 0:               # the "DP controller"
    if os.fork() == 0:           # its "scheduler"
        time.sleep(0.5)          # outlive the parent
        os.write(w, str(os.getppid()).encode())
        os._exit(0)
    os._exit(0)                  # the controller exits first
os.close(w)
ppid = int(os.read(r, 64))
print("ok" if ppid == me else f"re-parented to {ppid}, not the launcher {me}")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux")
def test_an_orphaned_grandchild_is_re_parented_to_the_launcher():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok", out.stdout
