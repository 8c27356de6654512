"""``python -m sglang_dcp.launch_router``: sglang-dcp's defaults, pass-through and bad arguments.

No server and no router is started: ``parse`` builds the pinned router's (smg) arguments.
"""

import socket
import subprocess
import sys

import pytest

from sglang_dcp.router.args import DCP_DEFAULTS, LaunchError, parse, parse_all

W = ["--worker-urls", "http://127.0.0.1:30010", "http://127.0.0.1:30020"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse(*extra):
    return parse([*W, "--port", str(_free_port()), "--prometheus-port", str(_free_port()), *extra])


def test_dcp_defaults_apply():
    args = _parse()
    for d in DCP_DEFAULTS:
        assert getattr(args, d.dest) == d.value, d.dest
        assert d.value != d.smg, f"{d.dest}: not a change from smg's default"
    assert args.worker_urls == W[1:]
    assert args.dp_aware is False


def test_explicit_flags_win_and_other_flags_pass_through():
    args = _parse(
        "--policy", "cache_aware", "--health-check-interval-secs", "30", "--dp-aware",
        "--retry-max-retries", "2", "--cache-threshold", "0.5",
    )  # fmt: skip
    assert args.policy == "cache_aware"
    assert args.health_check_interval_secs == 30
    assert args.dp_aware is True
    assert args.retry_max_retries == 2
    assert args.cache_threshold == 0.5
    assert args.load_monitor_interval == 2  # the untouched DCP defaults still apply


@pytest.mark.parametrize(
    "argv,fragment",
    [
        ([], "--worker-urls is required"),
        (["--worker-urls", "node0:30000"], "bad worker URL 'node0:30000'"),
        (["--worker-urls", "grpc://node0:30000"], "expected http://HOST:PORT"),
        (["--worker-urls", "http://node0:99999"], "port is not a number"),
        (["--worker-urls", "http://node0:30000/generate"], "without a path"),
        (["--worker-urls", "http://a:1", "http://a:1/"], "given twice"),
    ],
)
def test_bad_worker_urls(argv, fragment):
    with pytest.raises(LaunchError, match=fragment.replace("?", r"\?")):
        parse([*argv, "--port", str(_free_port()), "--prometheus-port", str(_free_port())])


def test_ready_wait_secs():
    assert parse_all([*W, "--port", str(_free_port()), "--prometheus-port", str(_free_port()),
                      "--ready-wait-secs", "5"])[1] == 5.0  # fmt: skip
    with pytest.raises(LaunchError, match="--ready-wait-secs"):
        _parse("--ready-wait-secs", "-1")


def test_ports_in_use():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {taken} .* pass --port"):
            parse([*W, "--port", str(taken), "--prometheus-port", str(_free_port())])
        with pytest.raises(LaunchError, match=f"port {taken} .* pass --prometheus-port"):
            parse([*W, "--port", str(_free_port()), "--prometheus-port", str(taken)])


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "sglang_dcp.launch_router", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv,fragment",
    [
        ([], "--worker-urls is required"),
        (["--worker-urls", "localhost:30000"], "bad worker URL"),
        ([*W, "--no-such-flag"], "--no-such-flag"),
        ([*W, "--policy", "fastest"], "invalid choice: 'fastest'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, fragment):
    proc = _run(*argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and fragment in lines[0], proc.stderr


def test_help_shows_the_router_flags_and_why_each_default_changed():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    out = "".join(proc.stdout.split())  # argparse wraps lines, also at hyphens
    flags = ("--worker-urls", "--dp-aware", "--demo", "--retry-max-retries", "--ready-wait-secs")
    for flag in flags:
        assert flag in out
    # how a client or a load balancer knows the router is ready
    assert "GET/readinessanswers200" in out and "router_not_ready" in out
    for d in DCP_DEFAULTS:
        assert f"[sglang-dcpdefault:{d.value};smg:{d.smg}:" in out, d.dest
