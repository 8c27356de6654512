"""The servers of ``launch_router --demo``: tiny ``launch_server --demo`` processes on this machine.

Shipped code, so it does not use ``sglang_dcp.testing`` (the test harness imports the router, not
the other way round). A server logs to a file, is healthy once ``/health`` answers 200, and
``stop()`` ends its whole process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

# With DP attention SGLang also binds port + 233 .. port + 240 (ZMQ_TCP_PORT_DELTA and the ports
# derived from it in server_args.PortArgs.init_new) and fails at start if one is taken.
DERIVED_PORT_OFFSETS = (0,) + tuple(range(233, 241))


class DemoServerError(RuntimeError):
    pass


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_range_free(port: int) -> bool:
    """``port`` and the ports SGLang derives from it (DP attention) are all free."""
    return all(port_free(port + off) for off in DERIVED_PORT_OFFSETS)


def _low_free_port(avoid: range, low: int = 20000, high: int = 32000) -> int:
    """A free port below Linux's ephemeral range (32768-60999), outside ``avoid``: SGLang's
    default NCCL port is ephemeral and bound minutes after launch, when a client connection may
    hold it."""
    import random

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high)
        if port not in avoid and port_free(port):
            return port
    raise DemoServerError(f"no free port in [{low}, {high})")


class DemoServer:
    """``python -m sglang_dcp.launch_server ARGS --host 127.0.0.1 --port PORT`` logging to
    ``log_path``."""

    def __init__(self, args: list[str], log_path: str, port: int, startup_timeout: float) -> None:
        self.port = port
        nccl = _low_free_port(avoid=range(port, port + DERIVED_PORT_OFFSETS[-1] + 1))
        self.args = [*args, "--host", "127.0.0.1", "--port", str(port), "--nccl-port", str(nccl)]
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001 -- not up yet
            return False

    def start(self) -> "DemoServer":
        cmd = [sys.executable, "-m", "sglang_dcp.launch_server", *self.args]
        with open(self.log_path, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise DemoServerError(f"exited with code {code} before it was healthy")
            if self.healthy():
                return self
            time.sleep(1.0)
        raise DemoServerError(f"not healthy after {self.startup_timeout:.0f} s")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (SGLang drains and takes its children down), then SIGKILL to the process
        group for anything left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # start_new_session: it leads the group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None


def start_all(servers: list[DemoServer]) -> str | None:
    """Start ``servers`` side by side (each announced with its log); ``None`` once all are
    healthy, else the first failure as one line naming the server and its log."""
    errors: list[str] = []

    def start(s: DemoServer) -> None:
        try:
            s.start()
        except DemoServerError as e:
            errors.append(f"{s.url}: {e} (log: {s.log_path})")

    for s in servers:
        print(f"[sglang-dcp] starting a demo server at {s.url} (log: {s.log_path})", flush=True)
    threads = [threading.Thread(target=start, args=(s,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors[0] if errors else None
