"""The router's public port: holds requests until the router has a worker, then relays bytes.

smg 1.13.0 starts serving before it has registered any worker (registration runs in the
background: it probes each server, reads its ``/server_info``, ...), and a request in that window
gets HTTP 404 ``model_not_found`` ("No worker available for model 'unknown'") while ``/health``
already answers 200. ``launch_router`` therefore runs smg on a loopback port and puts this gate on
the public ``--host``/``--port``:

- until smg's own ``/readiness`` answers 200 (at least one server registered and healthy),
  an inference request (any method other than GET/HEAD, outside smg's admin routes) **waits**,
  up to ``wait_secs``, and then goes through; past that it is answered
  ``503 {"error": {"code": "router_not_ready", "message": <which servers are missing>}}``
  with ``Retry-After``. ``GET /health`` answers that 503 at once (smg's own ``/health`` is a
  liveness probe and says 200 with no worker); ``GET /readiness`` and every other GET reach smg
  (its ``/readiness`` is 503 ``insufficient healthy workers`` in this window);
- from then on every connection is a plain TCP relay to smg: keep-alive, streaming, client
  disconnects (which abort the request upstream) behave as without the gate. The router sees
  every client as 127.0.0.1.

Nothing here imports SGLang or smg: it is asyncio on one thread.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request

# smg's admin and informational POST/PUT/DELETE routes: never held (adding a worker must work
# while there is none).
ADMIN_PREFIXES = (
    "/workers", "/flush_cache", "/start_profile", "/stop_profile", "/heap_profile", "/wasm",
    "/parse", "/v1/tokenizers", "/ha", "/mesh", "/rl",
)  # fmt: skip
MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0
READY_POLL_S = 0.2


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Gate:
    """``Gate(host, port, upstream_port, worker_urls).start()``; ``.opened`` is set once smg's
    ``/readiness`` answered 200."""

    def __init__(
        self,
        host: str | None,
        port: int,
        upstream_port: int,
        worker_urls: list[str],
        wait_secs: float = 30.0,
    ) -> None:
        self.host = host or None  # None: every interface
        self.port = port
        self.upstream = ("127.0.0.1", upstream_port)
        self.worker_urls = [u.rstrip("/") for u in worker_urls]
        self.wait_secs = wait_secs
        self.opened = threading.Event()
        self.reason = self._describe([])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open_event: asyncio.Event | None = None
        self._bound = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Gate":
        """Bind the public port (raises ``OSError`` if that fails) and serve from a daemon
        thread; a second daemon thread watches smg's readiness."""
        threading.Thread(target=self._serve, name="router-gate", daemon=True).start()
        self._bound.wait()
        if self._error is not None:
            raise self._error
        threading.Thread(target=self._watch, name="router-gate-ready", daemon=True).start()
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._open_event = asyncio.Event()
        try:
            server = loop.run_until_complete(
                asyncio.start_server(
                    self._handle, self.host, self.port, reuse_address=True, backlog=1024,
                    limit=MAX_HEAD_BYTES,
                )
            )  # fmt: skip
        except BaseException as e:  # noqa: BLE001 -- reported by start()
            self._error = e
            self._bound.set()
            return
        self._server = server  # serves until the process exits
        self._bound.set()
        loop.run_forever()

    def _watch(self) -> None:
        base = f"http://{self.upstream[0]}:{self.upstream[1]}"
        while True:
            try:
                status, _ = _get(base + "/readiness")
            except Exception:  # noqa: BLE001 -- smg not listening yet
                status = None
            if status == 200:
                self.opened.set()
                self._loop.call_soon_threadsafe(self._open_event.set)
                return
            try:
                workers = json.loads(_get(base + "/workers")[1]).get("workers", [])
            except Exception:  # noqa: BLE001 -- smg not listening yet
                workers = []
            self.reason = self._describe(workers)
            time.sleep(READY_POLL_S)

    def _describe(self, workers: list[dict]) -> str:
        """Why the router is not ready, from smg's ``/workers`` list."""
        state: dict[str, str] = {}
        for w in workers:  # with --dp-aware one entry per rank, "URL@k"
            url = str(w.get("url", "")).split("@")[0].rstrip("/")
            if state.get(url, "ready") == "ready":
                state[url] = str(w.get("status", "unknown"))
        urls = self.worker_urls or sorted(state)
        if not urls:
            return "no server is registered with the router yet"
        missing = [f"{u} ({state.get(u, 'not registered yet')})" for u in urls]
        return (
            f"no server is registered and healthy yet; waiting for {', '.join(missing)} "
            "(a server is registered once its /health answers and it has loaded its model)"
        )

    # -- connections -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        prefix = b""
        try:
            if not self._open_event.is_set():
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        asyncio.TimeoutError, ConnectionError):  # fmt: skip
                    return
                method, path = _request_line(head)
                if method in ("GET", "HEAD") and path == "/health":
                    return await self._not_ready(writer, method)
                if method not in ("GET", "HEAD", "OPTIONS") and not path.startswith(ADMIN_PREFIXES):
                    try:
                        await asyncio.wait_for(self._open_event.wait(), self.wait_secs)
                    except asyncio.TimeoutError:
                        return await self._not_ready(writer, method)
                    prefix = head
                else:
                    # Relayed while not ready: this connection's next request must come back
                    # through the check above, so smg closes it after this one.
                    prefix = _connection_close(head)
            await self._relay(reader, writer, prefix)
        finally:
            writer.close()

    async def _not_ready(self, writer: asyncio.StreamWriter, method: str, reason: str = "") -> None:
        body = json.dumps(
            {"error": {"code": "router_not_ready", "message": reason or self.reason}}
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 2\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head if method == "HEAD" else head + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass

    async def _relay(self, reader, writer, prefix: bytes) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:  # smg is not listening yet (or no more)
            return await self._not_ready(writer, "GET")
        try:
            if prefix:
                up_writer.write(prefix)
            to_up = asyncio.ensure_future(_pipe(reader, up_writer))
            to_client = asyncio.ensure_future(_pipe(up_reader, writer))
            done, _ = await asyncio.wait({to_up, to_client}, return_when=asyncio.FIRST_COMPLETED)
            if to_up in done and to_up.exception() is None and not to_client.done():
                # the client half-closed after sending: let the answer through
                await asyncio.wait({to_client})
            for t in (to_up, to_client):
                t.cancel()
            await asyncio.gather(to_up, to_client, return_exceptions=True)
        finally:
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while True:
        data = await src.read(65536)
        if not data:
            break
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof():
        try:
            dst.write_eof()
        except OSError:
            pass


def _connection_close(head: bytes) -> bytes:
    """``head`` (request line and headers, ending in a blank line) asking for
    ``Connection: close``."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]] + [h for h in lines[1:] if not h.lower().startswith(b"connection:")]
    return b"\r\n".join(kept + [b"Connection: close"]) + b"\r\n\r\n"


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) < 2:
        return "", ""
    return parts[0].upper(), parts[1].split("?", 1)[0]
