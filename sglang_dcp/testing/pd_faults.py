"""Helpers of the PD failure tests (``test/e2e/test_pd.py``, issue 24 item 4): a request held
mid-transfer by ``SGLANG_DCP_INJECT_PD_LANDING_DELAY``, its answer, and each decode rank's KV
next to the planner's books, all through the servers' HTTP APIs."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.error


def books(decode) -> list[tuple[int, int, int, int]]:
    """Each decode rank's (used KV, the planner's KV, guest KV, the planner's guest KV)."""
    return [(r["num_used_tokens"], r["dcp"]["planner_kv_tokens"], r["dcp"]["guest_kv_tokens"],
             r["dcp"]["planner_guest_kv_tokens"]) for r in decode.get("/v1/loads")["loads"]]


def settled_books(decode, timeout: float = 60) -> list[tuple[int, int, int, int]]:
    """``books(decode)`` once every rank's are 0 (or at ``timeout``): the DP controller books a
    request's end when its home reports it (``DcpFinished``), which may follow the ranks' own
    frees by a scheduler step or a health check's round trip."""
    deadline = time.monotonic() + timeout
    while True:
        out = books(decode)
        if all(b == (0, 0, 0, 0) for b in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def post(router, body: dict, out: dict) -> None:
    """``POST /generate``; ``out["code"], out["text"]``: the answer (599: no HTTP answer)."""
    try:
        out["code"], out["text"] = 200, str(router.post("/generate", body, timeout=600))
    except urllib.error.HTTPError as e:
        out["code"], out["text"] = e.code, e.read().decode(errors="replace")
    except OSError as e:  # the router dropped the connection
        out["code"], out["text"] = 599, repr(e)


class Disconnecting:
    """``POST /generate`` on a raw connection that ``close()`` drops, as a client going away."""

    def __init__(self, router, body: dict) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=600)
        self.body = json.dumps(body)

    def __call__(self, out: dict) -> None:
        try:
            self.conn.request("POST", "/generate", self.body,
                              {"Content-Type": "application/json"})  # fmt: skip
            out["code"] = self.conn.getresponse().status
        except OSError as e:
            out["code"], out["text"] = 599, repr(e)

    def close(self) -> None:
        import socket

        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def mid_transfer(prefill, decode, send) -> tuple[str, threading.Thread, dict]:
    """Run ``send(out)`` in a thread (a prompt whose transfer the prefill server holds); return
    once the prefill holds it, with the request's rid on the decode server (from its log)."""
    sizes = {s: os.path.getsize(s.log_path) for s in (prefill, decode)}
    out: dict = {}
    t = threading.Thread(target=send, args=(out,), daemon=True)
    t.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        logs = {}
        for s in (prefill, decode):
            with open(s.log_path, errors="replace") as f:
                f.seek(sizes[s])
                logs[s] = f.read()
        rids = re.findall(r"sglang_dcp: PD landing: (\S+) tokens", logs[decode])
        if rids and "injected delay" in logs[prefill]:
            return rids[0], t, out
        time.sleep(0.5)
    raise AssertionError(f"the transfer was never held mid-way:\n{logs[prefill][-2000:]}")


def retry_post(router, body: dict, timeout: float = 120) -> dict:
    """The router may take a few health checks to route to a restarted server again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return router.post("/generate", body, timeout=600)
        except (urllib.error.HTTPError, OSError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer after the restart: {e}") from e
            time.sleep(3)
