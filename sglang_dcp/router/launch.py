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
- the flags and checks themselves are in ``args.py``;
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

import os
import sys
import threading
import time
import urllib.request

from sglang_dcp.router.args import (
    DEMO_ROUTER_PORT, DEMO_SERVER_ARGS, DEMO_SERVER_PORTS, PROG, LaunchError, parse_all,
)  # fmt: skip


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
    from sglang_dcp.router.demo import DemoServer, port_range_free, start_all

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
    try:
        error = start_all(servers)
        if error:
            print(f"{PROG}: error: a demo server did not start: {error}", file=sys.stderr)
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
