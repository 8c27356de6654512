"""A PD-disaggregated trio for tests: a prefill server, a decode server and the router in PD mode
(``python -m sglang_dcp.launch_router --pd-disaggregation``), all real processes.

``PdRouterProcess`` is ``ServerProcess`` for the router in PD mode: ready once smg lists one
prefill and one decode worker. ``prefill_args``/``decode_args`` are the two servers' flags,
``start_trio`` starts all three (``test_pd.py``, ``test_pd_mla.py``).
"""

from __future__ import annotations

import threading

from sglang_dcp.testing.ports import free_low_port
from sglang_dcp.testing.server import ServerProcess

BOOTSTRAP_FLAG = "--disaggregation-bootstrap-port"


def prefill_args(model_path: str, bootstrap_port: int, pool_tokens: int) -> list[str]:
    """One prefill rank of the tiny model; its KV pool sized in tokens (``--max-total-tokens``:
    several servers load at once on one machine, so the fraction only bounds SGLang's check)."""
    return [
        "--model-path", model_path, "--dtype", "float32", "--disaggregation-mode", "prefill",
        BOOTSTRAP_FLAG, str(bootstrap_port), "--max-total-tokens", str(pool_tokens),
        "--mem-fraction-static", "0.9",
    ]  # fmt: skip


def decode_args(model_path: str, dp_size: int, pool_tokens: int) -> list[str]:
    """The decode server: ``dp_size`` DP-attention ranks, the planner in its DP controller."""
    return [
        "--model-path", model_path, "--dtype", "float32", "--disaggregation-mode", "decode",
        "--tp-size", str(dp_size), "--dp-size", str(dp_size), "--enable-dp-attention",
        "--max-total-tokens", str(pool_tokens), "--mem-fraction-static", "0.9",
        "--disable-radix-cache", "--sleep-on-idle",
    ]  # fmt: skip


class PdRouterProcess(ServerProcess):
    """``python -m sglang_dcp.launch_router --pd-disaggregation --prefill URL BOOTSTRAP_PORT
    --decode URL``; ready once both servers are registered workers."""

    module = "sglang_dcp.launch_router"

    def __init__(self, prefill_url: str, bootstrap_port: int, decode_url: str, log_path: str,
                 *, extra: tuple[str, ...] = (), startup_timeout: float = 180.0) -> None:  # fmt: skip
        prometheus = free_low_port(avoid=0)
        super().__init__(
            ["--pd-disaggregation", "--prefill", prefill_url, str(bootstrap_port),
             "--decode", decode_url, "--prometheus-port", str(prometheus), *extra],
            log_path, port=free_low_port(avoid=prometheus), startup_timeout=startup_timeout,
        )  # fmt: skip

    def ready(self) -> bool:
        kinds = {w.get("worker_type") for w in self.get("/workers", timeout=5)["workers"]}
        return {"prefill", "decode"} <= kinds


def start_trio(launch_server, prefill: list[str], decode: list[str], bootstrap_port: int,
               router_log: str, *, prefill_env=None, decode_env=None,
               router_extra: tuple[str, ...] = ()):  # fmt: skip
    """Start the two servers at once (each loads for minutes on a busy CPU), then the router in
    PD mode; returns ``(prefill, decode, router)``. ``launch_server(args, env=...)`` is the
    pytest plugin's fixture (it stops the servers); stop the router yourself."""
    started: dict[str, object] = {}

    def start(name, args, env):
        started[name] = launch_server(args, env=env, startup_timeout=900)

    threads = [threading.Thread(target=start, args=("prefill", prefill, prefill_env)),
               threading.Thread(target=start, args=("decode", decode, decode_env))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(started) == {"prefill", "decode"}, "a server failed to start (see its log)"
    router = PdRouterProcess(started["prefill"].url, bootstrap_port, started["decode"].url,
                             router_log, extra=router_extra)  # fmt: skip
    router.start()
    return started["prefill"], started["decode"], router
