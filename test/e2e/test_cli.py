"""``python -m sglang_dcp.launch_server`` bad arguments (SGLang's and ``--dcp-*`` ones): one clear
line, exit code 2, no server.

Each case is a real launcher process (most of its time is importing SGLang, ~17 s of CPU); the
module starts them all at once (``launched``) and each test waits for its own."""

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from sglang_dcp.testing.ports import free_port

pytestmark = pytest.mark.e2e


def _run(args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "sglang_dcp.launch_server", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


# Bad --dcp-* combinations on a 2-rank server: the flags, the fragment its one error line names.
BAD_DCP_FLAGS = {
    "tp4": (["--tp-size", "4", "--dcp-max-degree", "2"], "--tp-size == --dp-size"),
    "profile_off": (["--dcp-policy", "off", "--dcp-cost-profile", "x"], "--dcp-cost-profile"),
    "lb_method": (["--load-balance-method", "round_robin", "--dcp-max-degree", "2"],
                  "SGLang's own dispatcher"),
    "dcp_triton": (["--disable-radix-cache", "--dcp-max-degree", "2", "--attention-backend",
                    "dcp_triton"], "needs CUDA"),
}  # fmt: skip


@pytest.fixture(scope="module")
def launched(tiny_model_path, tiny_deepseek_path, tmp_path_factory):
    """Every case's launcher, started together: name -> future of its ``CompletedProcess``.
    The port case holds its listening socket until its launcher is done."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    nope = tmp_path_factory.mktemp("cli") / "nope"
    cases = {
        "missing": [],
        "nope": ["--model-path", str(nope)],
        "dp3": ["--model-path", tiny_model_path, "--tp-size", "4", "--dp-size", "3",
                "--enable-dp-attention"],
        "port": ["--model-path", tiny_model_path, "--port", str(port)],
        "unknown": ["--demo", "--no-such-flag"],
        "help": ["--help"],
        "fp8": ["--model-path", tiny_deepseek_path, "--tp-size", "2", "--dp-size", "2",
                "--enable-dp-attention", "--disable-radix-cache", "--kv-cache-dtype",
                "fp8_e4m3"],
        "demo_model": ["--demo-model", "tiny-deepseek-v3"],
    }  # fmt: skip
    two_ranks = ["--model-path", tiny_model_path, "--tp-size", "2", "--dp-size", "2",
                 "--enable-dp-attention", "--port", str(free_port())]  # fmt: skip
    # triton on CPU is allowed only under the interpreter, which the kernel tests set
    no_interpreter = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = {name: pool.submit(_run, args) for name, args in cases.items()}
        futures.update({name: pool.submit(_run, two_ranks + extra, no_interpreter)
                        for name, (extra, _) in BAD_DCP_FLAGS.items()})  # fmt: skip
        yield {"busy_port": port, **futures}
    busy.close()


def _result(launched, name):
    return launched[name].result()


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    err_lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(err_lines) == 1, proc.stderr[-2000:]
    for frag in fragments:
        assert frag in err_lines[0], err_lines[0]
    assert len(proc.stderr.splitlines()) <= 5, proc.stderr[-2000:]


def test_missing_model_path(launched):
    _assert_one_line_error(_result(launched, "missing"), "--model-path")


def test_model_path_does_not_exist(launched):
    _assert_one_line_error(_result(launched, "nope"), "does not exist")


def test_dp_size_must_divide_tp_size(launched):
    _assert_one_line_error(_result(launched, "dp3"), "--dp-size 3", "--tp-size 4")


def test_port_in_use(launched):
    _assert_one_line_error(_result(launched, "port"), f"port {launched['busy_port']}")


def test_unknown_flag(launched):
    _assert_one_line_error(_result(launched, "unknown"), "--no-such-flag")


def test_help_lists_sglang_and_dcp_flags(launched):
    proc = _result(launched, "help")
    assert proc.returncode == 0
    assert "--enable-dp-attention" in proc.stdout and "--demo" in proc.stdout


def test_quantized_kv_cache_with_kv_sharding(launched):
    """FP8 KV: SGLang's CPU attention cannot read it; on GPU the exchange lacks the scales."""
    _assert_one_line_error(_result(launched, "fp8"), "--kv-cache-dtype fp8_e4m3",
                           "drop --kv-cache-dtype")  # fmt: skip


def test_demo_model_needs_demo(launched):
    _assert_one_line_error(_result(launched, "demo_model"), "--demo-model", "--demo")


@pytest.mark.parametrize("name", list(BAD_DCP_FLAGS))
def test_bad_dcp_flags_are_one_line_startup_errors(launched, name):
    proc = _result(launched, name)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and BAD_DCP_FLAGS[name][1] in errors[0], proc.stderr[-2000:]
