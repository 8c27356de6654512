"""The launcher behind ``python -m sglang_dcp.launch_router``: SGLang's router in front of several
sglang-dcp servers.

The router is the SGLang Model Gateway (PyPI ``smg``, pinned in requirements/cpu.txt; README
"Several servers behind the router" says why this one). This launcher accepts every flag of
``python -m smg.launch_router`` and changes only:

- defaults that suit DCP workers (``DCP_DEFAULTS``; each one's reason is in ``--help``), which an
  explicit flag overrides;
- checks that fail early in one ``error:`` line with exit code 2: no worker URL, a URL that is
  not ``http(s)://HOST[:PORT]``, a port already taken, unknown flags;
- the public ``--host``/``--port`` belong to ``gate.Gate``, which relays to smg on a loopback
  port: smg serves before it has registered its servers (404 "No worker available for model"
  meanwhile), the gate holds inference requests until smg's ``/readiness`` is 200 (up to
  ``--ready-wait-secs``, then 503 ``router_not_ready`` with the reason) and answers ``/health``
  503 until then;
- ``--demo``: two tiny sglang-dcp servers on this machine's CPU with the router in front
  (``demo.DemoServer``; the demo checkpoint comes from ``sglang_dcp.sglang.launch.demo_model_path``;
  no shipped module imports ``sglang_dcp.testing``).

The contract with the servers (README):

- Without ``--dp-aware`` the router picks a server; that server's planner picks the home rank
  and, for a long request, the ranks holding its KV shards.
- With ``--dp-aware`` the router reads each server's DP size from ``/server_info``, picks a
  (server, rank k) pair and adds ``"data_parallel_rank": k`` to the request, which SGLang reads as
  ``routed_dp_rank``: k is the request's home rank; the planner still places its KV shards.
  A request rank k can never hold is answered HTTP 400 with the planner's reason (the router
  passes 4xx through without retrying); one that only does not fit now waits in rank k's queue.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
import urllib.request
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


def _get_json(url: str, timeout: float = 5.0):
    import json

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def workers_ready(router_url: str, worker_urls: list[str]) -> bool:
    """Every worker (every one of its DP ranks, with --dp-aware) is registered and ready."""
    try:
        workers = _get_json(router_url + "/workers")["workers"]
    except Exception:  # noqa: BLE001 -- not up yet, or not answering: not ready
        return False
    ready = {w["url"].split("@")[0] for w in workers if w.get("status") == "ready"}
    not_ready = {w["url"].split("@")[0] for w in workers if w.get("status") != "ready"}
    return {u.rstrip("/") for u in worker_urls} <= ready - not_ready


def _announce_when_ready(router_url: str, worker_urls: list[str], demo: bool) -> None:
    deadline = time.monotonic() + 1800
    while not workers_ready(router_url, worker_urls):
        if time.monotonic() > deadline:
            return
        time.sleep(1)
    lines = [f"[sglang-dcp] router ready at {router_url}"]
    if worker_urls:
        lines[0] += f" in front of {' '.join(worker_urls)}"
    if demo:
        lines += [
            "[sglang-dcp] try:",
            f"  curl -s {router_url}/generate -H 'Content-Type: application/json' \\",
            (
                '    -d \'{"text": "The quick brown fox", '
                '"sampling_params": {"max_new_tokens": 16, "temperature": 0}}\''
            ),
            f"  curl -s {router_url}/workers     # the servers and their health",
            f"  curl -s {router_url}/get_loads   # per server and DP rank: KV tokens, batch, queue",
        ]
    print("\n".join(lines), flush=True)


def run_router(args, *, ready_wait_secs: float = 30.0, demo: bool = False) -> int:
    """smg on a loopback port, the public --host/--port relayed to it by ``gate.Gate`` (which
    holds inference requests until smg has a healthy server); blocks until SIGINT/SIGTERM."""
    import smg.launch_router as smg_launch

    from sglang_dcp.router.gate import Gate, free_loopback_port

    public_host, public_port = args.host, args.port
    args.host, args.port = "127.0.0.1", free_loopback_port()
    try:
        Gate(public_host, public_port, args.port, list(args.worker_urls),
             wait_secs=ready_wait_secs).start()  # fmt: skip
    except OSError as e:
        print(f"{PROG}: error: cannot listen on {public_host}:{public_port}: {e}", file=sys.stderr)
        return 1
    host = "127.0.0.1" if public_host in ("0.0.0.0", "::") else public_host
    threading.Thread(
        target=_announce_when_ready,
        args=(f"http://{host}:{public_port}", list(args.worker_urls), demo),
        daemon=True,
    ).start()
    banner = smg_launch.print_banner  # smg's banner would show the loopback port
    smg_launch.print_banner = lambda _host, _port, mode: banner(public_host, public_port, mode)
    try:
        smg_launch.launch_router(args)  # blocks until SIGINT/SIGTERM
    except KeyboardInterrupt:  # Ctrl-C is how the demo stops: no traceback
        return 0
    except Exception as e:  # noqa: BLE001 -- smg logged the details; say it in one line
        print(f"{PROG}: error: the router stopped: {e}", file=sys.stderr)
        return 1
    finally:
        smg_launch.print_banner = banner
    return 0


def run_demo(argv: list[str]) -> int:
    """Two ``launch_server --demo`` servers, then the router in front of them, in this process."""
    from sglang_dcp import env
    from sglang_dcp.router.demo import DemoServer, DemoServerError, port_range_free

    argv = [a for a in argv if a != "--demo"]
    for port in DEMO_SERVER_PORTS:
        if not port_range_free(port):
            raise LaunchError(
                f"demo server port {port} (or one SGLang derives from it, {port + 233}..{port + 240}) "
                "is taken; stop what uses it (another demo?) and retry"
            )
    urls = [f"http://127.0.0.1:{p}" for p in DEMO_SERVER_PORTS]
    given = {a.split("=", 1)[0] for a in argv}
    if "--port" not in given:
        argv += ["--port", str(DEMO_ROUTER_PORT)]
    if "--log-level" not in given:
        argv += ["--log-level", "warn"]  # keep the ready banner in sight; the servers log to files
    args, ready_wait_secs = parse_all(["--worker-urls", *urls, *argv])
    log_dir = os.path.join(env.cache_dir(), "demo-router")
    os.makedirs(log_dir, exist_ok=True)
    servers = [
        DemoServer(DEMO_SERVER_ARGS, os.path.join(log_dir, f"server{i}.log"), port=p,
                   startup_timeout=900)
        for i, p in enumerate(DEMO_SERVER_PORTS)
    ]  # fmt: skip
    # Build the demo checkpoint here, once: two servers building it at once race on its cache
    # directory (the second one's rename fails).
    from sglang_dcp.sglang.launch import demo_model_path

    demo_model_path()
    for s in servers:
        print(f"[sglang-dcp] starting a demo server at {s.url} (log: {s.log_path})", flush=True)
    errors: list[str] = []

    def start(s: DemoServer) -> None:
        try:
            s.start()
        except DemoServerError as e:
            errors.append(f"{s.url}: {e} (log: {s.log_path})")

    try:
        threads = [threading.Thread(target=start, args=(s,), daemon=True) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            print(f"{PROG}: error: a demo server did not start: {errors[0]}", file=sys.stderr)
            return 1
        return run_router(args, ready_wait_secs=ready_wait_secs, demo=True)
    finally:
        for s in servers:
            s.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if "--demo" in argv:
            return run_demo(argv)
        args, ready_wait_secs = parse_all(argv)
    except LaunchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return run_router(args, ready_wait_secs=ready_wait_secs)


if __name__ == "__main__":
    sys.exit(main())
