"""``python -m sglang_dcp.launch_server`` bad arguments: one clear line, exit code 2, no server."""

import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _run(args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "sglang_dcp.launch_server", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    err_lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(err_lines) == 1, proc.stderr[-2000:]
    for frag in fragments:
        assert frag in err_lines[0], err_lines[0]
    assert len(proc.stderr.splitlines()) <= 5, proc.stderr[-2000:]


def test_missing_model_path():
    _assert_one_line_error(_run([]), "--model-path")


def test_model_path_does_not_exist(tmp_path):
    _assert_one_line_error(_run(["--model-path", str(tmp_path / "nope")]), "does not exist")


def test_dp_size_must_divide_tp_size(tiny_model_path):
    proc = _run(["--model-path", tiny_model_path, "--tp-size", "4", "--dp-size", "3",
                 "--enable-dp-attention"])  # fmt: skip
    _assert_one_line_error(proc, "--dp-size 3", "--tp-size 4")


def test_port_in_use(tiny_model_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _run(["--model-path", tiny_model_path, "--port", str(port)])
    _assert_one_line_error(proc, f"port {port}")


def test_unknown_flag():
    _assert_one_line_error(_run(["--demo", "--no-such-flag"]), "--no-such-flag")


def test_help_lists_sglang_and_dcp_flags():
    proc = _run(["--help"])
    assert proc.returncode == 0
    assert "--enable-dp-attention" in proc.stdout and "--demo" in proc.stdout


def test_quantized_kv_cache_with_kv_sharding(tiny_deepseek_path):
    """FP8 KV: SGLang's CPU attention cannot read it; on GPU the exchange lacks the scales."""
    proc = _run(["--model-path", tiny_deepseek_path, "--tp-size", "2", "--dp-size", "2",
                 "--enable-dp-attention", "--disable-radix-cache", "--kv-cache-dtype",
                 "fp8_e4m3"])  # fmt: skip
    _assert_one_line_error(proc, "--kv-cache-dtype fp8_e4m3", "drop --kv-cache-dtype")


def test_demo_model_needs_demo():
    _assert_one_line_error(_run(["--demo-model", "tiny-deepseek-v3"]), "--demo-model", "--demo")
