"""``launch_router`` against stub servers: no 404 before the servers are registered, the public
port relays once they are, a burst spreads over both.

The router is the real one (smg 1.13.0 behind the launcher's gate, a subprocess); the servers
are in-process stubs that answer what smg asks of an SGLang server (``/health``,
``/server_info``, ``/model_info``, ``/v1/models``, ``/v1/loads``) and answer ``/generate`` with
their own port. A stub can start listening late, as a real server does once its model is loaded.
"""

from __future__ import annotations

import collections
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(rank: int) -> dict:
    return {
        "dp_rank": rank, "num_running_reqs": 0, "num_waiting_reqs": 0,
        "num_waiting_uncached_tokens": 0, "num_used_tokens": 0, "max_total_num_tokens": 4096,
        "token_usage": 0.0, "gen_throughput": 0.0, "cache_hit_rate": 0.0, "utilization": 0.0,
        "max_running_requests": 64,
    }  # fmt: skip


class StubServer:
    """An SGLang-shaped HTTP server on ``port``; ``start(after=s)`` listens ``s`` seconds later."""

    def __init__(self, delay: float = 0.2) -> None:
        self.port = _free_port()
        self.delay = delay
        self.generated = 0
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, after: float = 0.0) -> "StubServer":
        def run():
            time.sleep(after)
            self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            self._httpd.daemon_threads = True
            self._httpd.serve_forever(poll_interval=0.1)

        threading.Thread(target=run, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path in ("/health", "/health_generate"):
                    return self._send(200, {})
                if path in ("/server_info", "/get_server_info"):
                    return self._send(200, {"dp_size": 2, "tp_size": 2, "model_path": "stub"})
                if path in ("/model_info", "/get_model_info"):
                    return self._send(200, {"model_path": "stub", "is_generation": True})
                if path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": "stub"}]})
                if path == "/v1/loads":
                    return self._send(200, {"dp_rank_count": 2, "loads": [_load(0), _load(1)]})
                self._send(404, {"error": path})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if payload.get("stream"):
                    return self._stream()
                time.sleep(stub.delay)
                stub.generated += 1
                self._send(200, {"text": "x", "output_ids": [1], "meta_info": {"port": stub.port}})

            def _stream(self):
                """Three SSE chunks 0.5 s apart, then [DONE] (HTTP/1.0-style: close ends it)."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i in range(3):
                    self.wfile.write(f"data: {json.dumps({'i': i, 't': time.time()})}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.5)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler


@pytest.fixture
def router_with(tmp_path):
    procs = []

    def start(worker_urls, *args):
        port, prom = _free_port(), _free_port()
        log = open(tmp_path / f"router{len(procs)}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sglang_dcp.launch_router", "--worker-urls", *worker_urls,
             "--port", str(port), "--prometheus-port", str(prom),
             "--shutdown-grace-period-secs", "0", *args],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def _healthy(url: str) -> set[str]:
    """The worker URLs the router has ready and healthy (smg's ``/workers``)."""
    status, body = _call(url, "/workers", timeout=10)
    if status != 200 or not isinstance(body, dict):
        return set()
    return {w["url"] for w in body.get("workers", ())
            if w.get("is_healthy") and w.get("status") == "ready"}  # fmt: skip


def _call(url: str, path: str, payload: dict | None = None, timeout: float = 60.0):
    """(status, parsed body) or (None, error) when nothing listens yet."""
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, _parse(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _parse(e.read())
    except (urllib.error.URLError, ConnectionError) as e:
        return None, repr(e)


def _parse(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")  # smg's /health says "OK"


def _generate(url: str, i: int = 0):
    return _call(url, "/generate", {"text": f"hi {i}", "sampling_params": {"max_new_tokens": 1}})


def test_requests_before_the_servers_exist_wait_for_them_never_404(router_with):
    """Servers that start listening 4 s after the router (a real one loads its model first):
    requests sent from the router's first second on wait and succeed; /health and /readiness
    say 503 until then."""
    stubs = [StubServer(), StubServer()]
    url = router_with([s.url for s in stubs])
    for s in stubs:
        s.start(after=4.0)
    t0 = time.monotonic()
    seen = collections.Counter()
    probes = []
    while time.monotonic() - t0 < 30:
        status, body = _call(url, "/health", timeout=10)
        if status is not None:
            break
        time.sleep(0.05)
    # The launcher listens; no server is up yet.
    assert status == 503 and body["error"]["code"] == "router_not_ready", (status, body)
    assert stubs[0].url in body["error"]["message"], body
    import http.client

    # A keep-alive connection that asks something first: that answer closes it, so its next
    # request (a new connection) waits like the others instead of reaching smg unchecked.
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    conn.request("GET", "/readiness")
    r = conn.getresponse()
    assert r.status == 503 and r.getheader("Connection", "").lower() == "close", r.read()
    r.read()
    conn.request("POST", "/generate", body=json.dumps({"text": "same connection"}),
                 headers={"Content-Type": "application/json"})  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        early = list(pool.map(lambda i: _generate(url, i), range(8)))
        while time.monotonic() - t0 < 30:
            status, _ = _call(url, "/health", timeout=10)
            probes.append(status)
            if status == 200:
                break
            time.sleep(0.1)
    seen.update(status for status, _ in early)
    assert seen == {200: 8}, early
    late = conn.getresponse()  # sent before the 8 above
    assert late.status == 200, late.read()
    conn.close()
    assert probes[-1] == 200 and set(probes) <= {200, 503}, probes
    assert time.monotonic() - t0 >= 3.5  # they really waited for the servers
    assert _call(url, "/readiness")[0] == 200
    for s in stubs:
        s.stop()


def test_a_request_that_waits_too_long_gets_503_with_the_reason(router_with):
    missing = f"http://127.0.0.1:{_free_port()}"
    url = router_with([missing], "--ready-wait-secs", "1")
    deadline = time.monotonic() + 30
    while (status := _generate(url)[0]) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    status, body = _generate(url)
    assert status == 503, (status, body)
    assert body["error"]["code"] == "router_not_ready" and missing in body["error"]["message"]
    # admin and informational routes are not held
    status, workers = _call(url, "/workers", timeout=10)
    assert status == 200 and "workers" in workers


def test_a_burst_spreads_over_two_idle_servers(router_with):
    """24 requests from 8 concurrent clients, 3 bursts: each server gets 40-60% of each."""
    stubs = [StubServer(delay=0.3).start(), StubServer(delay=0.3).start()]
    url = router_with([s.url for s in stubs])
    deadline = time.monotonic() + 60
    # ready means one healthy server; on a loaded machine the second can join a moment later
    # (a CI run split the first burst 16/8), so the bursts start once both are in rotation
    while _healthy(url) != {s.url for s in stubs}:
        assert time.monotonic() < deadline, f"servers not in rotation: {_healthy(url)}"
        time.sleep(0.2)
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            out = list(pool.map(lambda i: _generate(url, i), range(24)))
        assert all(status == 200 for status, _ in out), out
        split = collections.Counter(body["meta_info"]["port"] for _, body in out)
        assert all(0.4 * 24 <= split[s.port] <= 0.6 * 24 for s in stubs), split
    for s in stubs:
        s.stop()


def test_streaming_and_keep_alive_go_through_the_relay(router_with):
    stub = StubServer(delay=0.0).start()
    url = router_with([stub.url])
    deadline = time.monotonic() + 60
    while _call(url, "/readiness", timeout=10)[0] != 200:
        assert time.monotonic() < deadline, "router not ready"
        time.sleep(0.2)
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    for i in range(3):  # one connection, three requests
        conn.request("POST", "/generate", body=json.dumps({"text": f"x{i}"}),
                     headers={"Content-Type": "application/json"})  # fmt: skip
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["meta_info"]["port"] == stub.port
    conn.close()
    # a stream arrives chunk by chunk, not buffered until the end
    req = urllib.request.Request(
        url + "/generate",
        data=json.dumps({"text": "s", "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    arrivals = []
    with urllib.request.urlopen(req, timeout=30) as r:
        for line in r:
            if line.startswith(b"data: "):
                arrivals.append((time.monotonic(), line.strip()))
    assert [a[1] for a in arrivals][-1] == b"data: [DONE]" and len(arrivals) == 4, arrivals
    assert arrivals[2][0] - arrivals[0][0] > 0.7, arrivals  # the chunks came 0.5 s apart
    stub.stop()
