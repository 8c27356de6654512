"""The flags of ``python -m sglang_dcp.launch_router``: smg's own plus ``--demo`` and
``--ready-wait-secs``, the defaults sglang-dcp changes (``DCP_DEFAULTS``, each with its reason
in ``--help``) and the checks that fail early in one ``error:`` line (``LaunchError``)."""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

PROG = "python -m sglang_dcp.launch_router"
ROUTER_DIST = "smg"  # the pinned router's PyPI name (requirements/cpu.txt)
DEMO_ROUTER_PORT = 30000
# SGLang with DP attention also binds port + 233 .. port + 240; these two ranges do not overlap.
DEMO_SERVER_PORTS = (30010, 30020)
# On CPU, SGLang sizes the KV pool from free system memory measured before and after loading the
# weights, and fails if it dropped by more than 1 - mem_fraction_static meanwhile: with two
# servers loading at once, --demo's 0.05 is too tight. The pool is capped instead.
DEMO_SERVER_ARGS = [
    "--demo", "--mem-fraction-static", "0.2", "--max-total-tokens", "32768",
    "--tp-size", "2", "--dp-size", "2",  # the single-server demo has 4 ranks; two of those is a lot
]  # fmt: skip


@dataclass(frozen=True)
class Default:
    """A router default sglang-dcp changes: ``dest`` is the smg flag's argparse dest."""

    dest: str
    value: object
    smg: object  # smg 1.13.0's own default, shown in --help
    why: str


DCP_DEFAULTS = (
    Default(
        "policy", "round_robin", "cache_aware",
        "a burst that arrives between two load polls spreads evenly over the servers (24 "
        "requests from 8 clients over 2 idle servers: 12/12 in every burst measured). "
        "least_load split such bursts 16/8, 8/16 and 15/9 here (24/0 in issue 14): its score "
        "counts a queued request at its uncached prompt tokens (a few for a short prompt) but a "
        "running or just-sent one at --least-load-mean-prefill-tokens (1024). smg's "
        "worker-overload guard still skips a "
        "server with >= --worker-overload-waiting-requests waiting or >= "
        "--worker-overload-token-usage mean KV usage while another is below both. For servers "
        "of different speeds use --policy power_of_two --power-of-two-load-metric "
        "least_requests (fewest requests in flight, then least_load's score)",
    ),
    Default(
        "load_monitor_interval", 2, 10,
        "seconds between polls of each server's /v1/loads: one long request changes a server's "
        "footprint a lot, and a poll is one GET answered from shared memory",
    ),
    Default(
        "health_check_interval_secs", 5, 60,
        "with --health-failure-threshold 2, a dead server leaves rotation within about 10 s "
        "(smg's defaults: about 3 minutes); requests meanwhile are retried on other servers",
    ),
    Default("health_failure_threshold", 2, 3, "see --health-check-interval-secs"),
    Default(
        "health_check_timeout_secs", 20, 5,
        "SGLang's /health runs a one-token generation and waits up to 20 s "
        "(SGLANG_HEALTH_CHECK_TIMEOUT) for any output; a busy server can need more than 5 s",
    ),
    Default(
        "worker_startup_check_interval", 5, 30,
        "seconds between registration attempts of a server that is not up yet: servers take "
        "minutes to load, and the router starts using each within 5 s of it being healthy",
    ),
)  # fmt: skip


class LaunchError(Exception):
    """A bad argument or environment; printed as one line."""


class _OneLineParser(argparse.ArgumentParser):
    """The router has ~200 flags: print the error, not a page of usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from smg.router_args import RouterArgs

    parser = _OneLineParser(
        prog=PROG,
        description="SGLang's router (smg) in front of several sglang-dcp servers, with "
        "defaults that suit DCP workers. Every smg router flag is accepted; the defaults "
        "marked [sglang-dcp] differ from smg's.",
        allow_abbrev=False,
    )
    group = parser.add_argument_group("sglang-dcp")
    group.add_argument(
        "--demo",
        action="store_true",
        help=f"Start two tiny sglang-dcp demo servers on this machine's CPU (2 DP ranks each, "
        f"ports {DEMO_SERVER_PORTS[0]} and {DEMO_SERVER_PORTS[1]}) and the router in front of "
        f"them (--port, default {DEMO_ROUTER_PORT}); Ctrl-C stops all three.",
    )
    group.add_argument(
        "--ready-wait-secs",
        type=float,
        default=30.0,
        help="How long an inference request sent before the router has a registered, healthy "
        "server waits for one; past that it gets HTTP 503 router_not_ready naming the servers "
        "still missing (Retry-After: 2), never smg's 404. The router is ready when GET "
        "/readiness answers 200 (503 before; point a load balancer's probe there); GET /health "
        "answers 503 router_not_ready until then and 200 after (liveness). The launcher prints "
        "'router ready' once every --worker-urls server is registered. (smg itself serves before "
        "registering its servers, so the launcher runs it on a loopback port and relays the "
        "public --host/--port to it; smg sees clients as 127.0.0.1.)",
    )
    RouterArgs.add_cli_args(parser, use_router_prefix=False)
    actions = {a.dest: a for a in parser._actions}
    for d in DCP_DEFAULTS:
        action = actions[d.dest]
        action.default = d.value
        action.help = f"{action.help} [sglang-dcp default: {d.value}; smg: {d.smg}: {d.why}]"
    actions["dp_aware"].help = (
        "Route to a (server, DP rank) pair: the router sends data_parallel_rank=k, the "
        "request's home rank on that server; its planner still places the KV shards. A request "
        "rank k can never hold gets HTTP 400 with the planner's reason; one that does not fit "
        "now waits in rank k's queue. Without it the router picks a server and that server's "
        "planner picks the home rank."
    )
    return parser


def check_worker_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LaunchError(
            f"bad worker URL {url!r}: expected http://HOST:PORT (an sglang-dcp server's HTTP "
            "address, as given to its --host/--port)"
        )
    try:
        parts.port  # noqa: B018 -- raises on a non-numeric or out-of-range port
    except ValueError:
        raise LaunchError(f"bad worker URL {url!r}: the port is not a number in 1..65535") from None
    if parts.path not in ("", "/") or parts.query:
        raise LaunchError(f"bad worker URL {url!r}: give the server's base URL, without a path")


def check_port(host: str | None, port: int, flag: str) -> None:
    bind_host = "" if host in (None, "0.0.0.0", "::") else host
    family = socket.AF_INET6 if bind_host and ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, port))
        except OSError as e:
            raise LaunchError(
                f"port {port} on {host or '0.0.0.0'} is not available ({e.strerror}); pass {flag} "
                "with a free port"
            ) from None


def check_args(ns: argparse.Namespace) -> None:
    """Fail early, in one line, on what the router would report late or not at all."""
    elsewhere = ns.service_discovery or ns.discovery_provider or ns.prefill or ns.decode
    if not ns.worker_urls and not elsewhere:
        raise LaunchError(
            "--worker-urls is required: one URL per sglang-dcp server, e.g. "
            "--worker-urls http://node0:30000 http://node8:30000 (or pass --demo)"
        )
    seen = set()
    for url in ns.worker_urls:
        check_worker_url(url)
        if url.rstrip("/") in seen:
            raise LaunchError(f"worker URL {url!r} is given twice")
        seen.add(url.rstrip("/"))
    check_port(ns.host, ns.port, "--port")
    if ns.prometheus_port is not None:
        check_port(ns.prometheus_host or ns.host, ns.prometheus_port, "--prometheus-port")


def parse(argv: list[str]):
    """smg's ``RouterArgs`` for ``argv`` (sglang-dcp's defaults applied, checked); raises
    ``LaunchError`` on bad input and exits 2 on an argparse error."""
    return parse_all(argv)[0]


def parse_all(argv: list[str]):
    """``(RouterArgs, ready_wait_secs)``: smg's arguments and the launcher's own."""
    from smg.router_args import RouterArgs

    ns = build_parser().parse_args(argv)  # argparse errors: one line, exit 2
    check_args(ns)
    if not ns.ready_wait_secs >= 0:
        raise LaunchError("--ready-wait-secs must be >= 0")
    try:
        args = RouterArgs.from_cli_args(ns, use_router_prefix=False)
        args._validate_router_args()
    except ValueError as e:
        raise LaunchError(f"invalid router arguments: {e}") from None
    return args, ns.ready_wait_secs
