"""The kernels compile for sm_90 without a GPU (Triton compiles ahead of time with its bundled
ptxas), exactly as ``ops.py`` would launch them. This catches errors the interpreter accepts
(e.g. loop-carried type changes). Runs in a subprocess: TRITON_INTERPRET is read at import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("aot_compile_sm90.py")


def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") >= 10, proc.stdout
    assert " 0 mma" not in proc.stdout.split("mla128")[1].split("\n")[0], "MLA must use tensor cores"
