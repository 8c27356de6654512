"""Start a real ``sglang_dcp.launch_server`` (or ``launch_router``) in a subprocess for tests,
and clean it up.

``ServerProcess`` picks a free port, logs to a file, waits for ``/health`` (failing fast, with
the log tail, if the process dies), and on ``stop()`` terminates the whole process tree and
checks that nothing is left behind; ``kill()`` is a crash (SIGKILL to the whole tree), after
which ``start()`` may bring it back on the same port. ``RouterProcess`` is the same for
``python -m sglang_dcp.launch_router`` in front of servers. The pytest fixtures in
``sglang_dcp.testing.pytest_plugin`` wrap both and attach the logs to the report of a failing
test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil

from sglang_dcp.testing.ports import free_low_port, free_server_port


class ServerError(RuntimeError):
    pass


class ServerProcess:
    """One server: ``ServerProcess(args, log_path).start()``; ``.url``; ``.stop()``."""

    module = "sglang_dcp.launch_server"

    def __init__(
        self,
        args: list[str],
        log_path: str,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 300.0,
    ) -> None:
        self.port = port or free_server_port()
        self.args = list(args) + ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.module == ServerProcess.module and "--nccl-port" not in self.args:
            # SGLang's default is an ephemeral port picked at launch and bound minutes later by
            # the schedulers' torch.distributed store; meanwhile a client connection can take
            # it (EADDRINUSE at startup). Pick one below the ephemeral range instead.
            self.args += ["--nccl-port", str(free_low_port(avoid=self.port))]
        self.log_path = log_path
        # The test suite sets TRITON_INTERPRET=1 for its kernel tests (test/conftest.py); a server
        # inheriting it would run the DCP exchange's kernels through the Triton interpreter,
        # ~50x slower than the torch path a CPU server uses. Pass it in ``env`` to get it.
        inherited = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.env = {**inherited, **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._descendants: list[psutil.Process] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        """Serving: ``/health`` answers 200."""
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return r.status == 200

    def start(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", self.module, *self.args]
        self._log = open(self.log_path, "a")  # a restart after kill() keeps the first run's log
        self._log.write("$ " + " ".join(cmd) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"server exited with code {self.proc.returncode} before it was healthy; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                if self.ready():
                    self._remember_descendants()
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerError(
            f"server not healthy after {self.startup_timeout:.0f} s; log tail:\n{self.log_tail()}"
        )

    def _remember_descendants(self) -> None:
        try:
            self._descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            self._descendants = []

    def log_tail(self, num_lines: int = 80) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-num_lines:])
        except OSError:
            return "(no log)"

    def post(self, path: str, payload: dict, timeout: float = 300.0) -> dict:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def get(self, path: str, timeout: float = 30.0) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def stop(self, timeout: float = 60.0) -> list[int]:
        """Terminate the server tree. Returns pids that had to be SIGKILLed (empty = clean)."""
        if self.proc is None:
            return []
        self._remember_descendants_alive()
        killed: list[int] = []
        if self.proc.poll() is None:
            # SIGTERM to the launcher only: SGLang drains and takes its own children down.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                killed.append(self.proc.pid)
        procs = [p for p in self._descendants if p.is_running()]
        _, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            killed.append(p.pid)
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None
        return killed

    def kill(self) -> None:
        """Crash the server: SIGKILL to its whole process tree at once, no draining. ``start()``
        may follow (same port, same log)."""
        if self.proc is None:
            return
        self._remember_descendants_alive()
        try:
            # start_new_session: the launcher leads a process group holding SGLang's children.
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in self._descendants:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)
        psutil.wait_procs(self._descendants, timeout=15)
        self._log.close()
        self.proc = None

    def _remember_descendants_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._descendants = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass


class RouterProcess(ServerProcess):
    """``python -m sglang_dcp.launch_router`` in front of ``worker_urls``; ready once every
    worker (every DP rank of each, with ``--dp-aware``) is registered and healthy.

    Its Prometheus listener gets a free port (smg binds 0.0.0.0:29000 by default)."""

    module = "sglang_dcp.launch_router"

    def __init__(
        self,
        worker_urls: list[str],
        log_path: str,
        *,
        args: list[str] = (),
        port: int | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.worker_urls = list(worker_urls)
        self.prometheus_port = free_low_port(avoid=0)
        super().__init__(
            ["--worker-urls", *self.worker_urls, "--prometheus-port", str(self.prometheus_port),
             *args],
            log_path, port=port or free_low_port(avoid=self.prometheus_port), env=env,
            startup_timeout=startup_timeout,
        )  # fmt: skip

    def ready(self) -> bool:
        from sglang_dcp.router.launch import workers_ready

        return workers_ready(self.url, self.worker_urls)

    def workers(self) -> dict[str, str]:
        """Worker URL (``URL@rank`` with ``--dp-aware``) -> status (ready, not_ready, failed)."""
        return {w["url"]: w["status"] for w in self.get("/workers")["workers"]}

    def requests_per_worker(self) -> dict[str, int]:
        """smg's ``smg_worker_requests_total`` by worker URL: requests the router sent there."""
        url = f"http://127.0.0.1:{self.prometheus_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("smg_worker_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                worker = labels.split('worker="', 1)[1].split('"', 1)[0]
                counts[worker] = counts.get(worker, 0) + int(float(value))
        return counts


TEST_POOL_TOKENS = 65536  # each rank's SGLang pool in tiny_dp_args (48 MiB of tiny-model KV)


def tiny_dp_args(model_path: str, dp_size: int = 2, sleep_on_idle: bool = True) -> list[str]:
    """Server flags for the tiny model with DP attention over ``dp_size`` CPU ranks.

    ``--dtype float32``: SGLang's "auto" would run the float32 checkpoint in float16, and greedy
    output would no longer match HF transformers token for token. ``--sleep-on-idle``: idle DP
    ranks otherwise spin on their per-iteration collectives, and test servers share few cores.
    Its price: an idle rank polls its sockets once a second (SGLang's ``IdleSleeper``); one
    with no request of its own wakes only then, so a step after an idle spell waits up to 1 s
    (4 ranks, 64-token prompts: TTFT 150-1190 ms by the arrival's phase, 137-185 ms without
    it). Latency benchmarks pass ``sleep_on_idle=False``.

    Each rank's KV pool is sized in tokens (``--max-total-tokens``, ``TEST_POOL_TOKENS``), not as
    a share of free memory: SGLang measures the host's free memory before and after loading the
    weights, so whatever another process allocated meanwhile (another server, a test's gloo
    ranks) counted against the former ``--mem-fraction-static 0.05`` and failed the start
    ("Loaded weights leave no GPU memory for the KV cache"); the fraction now only bounds that
    check, as in the demo. A test that passes its own pool flags after these overrides them."""
    return [
        "--model-path", model_path,
        "--tp-size", str(dp_size), "--dp-size", str(dp_size), "--enable-dp-attention",
        "--max-total-tokens", str(TEST_POOL_TOKENS), "--mem-fraction-static", "0.9",
        "--dtype", "float32",
        *(["--sleep-on-idle"] if sleep_on_idle else []),
    ]  # fmt: skip
