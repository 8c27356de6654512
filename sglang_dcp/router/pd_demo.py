"""``make demo-pd`` (``python -m sglang_dcp.router.pd_demo``): a PD-disaggregated deployment on
this machine's CPU. A prefill server (1 rank), a decode server whose DP controller runs the
planner (``PD_DECODE_DP`` DP-attention ranks), both ``launch_server`` processes logging to files,
and the router in PD mode on :30000 in this process, over SGLang's mooncake transfer engine (TCP).
Ctrl-C stops all three.

KV pools are sized in tokens (``--max-total-tokens``).
"""

from __future__ import annotations

import os
import sys

from sglang_dcp.router.args import DEMO_ROUTER_PORT, LaunchError, parse_all
from sglang_dcp.router.demo import DemoServer, port_free, port_range_free, start_all

PROG = "make demo-pd"
PREFILL_PORT, DECODE_PORT, BOOTSTRAP_PORT = 30010, 30020, 30998
PD_DECODE_DP = 4
POOL_TOKENS = 32768
PLANNER_TOKENS = 1024  # the decode planner's KV per rank: a 3000-token prompt lands in shards


def server_args(model_path: str) -> tuple[list[str], list[str]]:
    """(prefill flags, decode flags) for the demo checkpoint at ``model_path``."""
    common = ["--model-path", model_path, "--dtype", "float32", "--max-total-tokens",
              str(POOL_TOKENS), "--mem-fraction-static", "0.9"]  # fmt: skip
    prefill = [*common, "--disaggregation-mode", "prefill",
               "--disaggregation-bootstrap-port", str(BOOTSTRAP_PORT)]  # fmt: skip
    decode = [*common, "--disaggregation-mode", "decode", "--tp-size", str(PD_DECODE_DP),
              "--dp-size", str(PD_DECODE_DP), "--enable-dp-attention", "--disable-radix-cache",
              "--sleep-on-idle", "--dcp-kv-capacity", str(PLANNER_TOKENS)]  # fmt: skip
    return prefill, decode


def _try_lines(url: str, decode_url: str) -> list[str]:
    return [
        "[sglang-dcp] PD demo: prefill server -> decode server (the planner places each request)",
        "[sglang-dcp] try:",
        f"  curl -s {url}/generate -H 'Content-Type: application/json' \\",
        "    -d '{\"text\": \"The quick brown fox\", "
        "\"sampling_params\": {\"max_new_tokens\": 16, \"temperature\": 0}}'",
        f"  curl -s {decode_url}/v1/loads   # the decode ranks' KV",
        "[sglang-dcp] a long prompt's KV lands straight in its shards on the decode ranks:",
        f"  python -m sglang_dcp.demo_client --url {url} --lengths 40 3000",
    ]


def main(argv: list[str] | None = None) -> int:
    from sglang_dcp import env
    from sglang_dcp.router.launch import run_router
    from sglang_dcp.sglang.launch import demo_model_path

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        for port in (PREFILL_PORT, DECODE_PORT):
            if not port_range_free(port):
                raise LaunchError(f"demo server port {port} (or {port + 233}..{port + 240}) is "
                                  "taken; stop what uses it (another demo?) and retry")  # fmt: skip
        if not port_free(BOOTSTRAP_PORT):
            raise LaunchError(f"the prefill bootstrap port {BOOTSTRAP_PORT} is taken; stop what uses it")
        pre, dec = f"http://127.0.0.1:{PREFILL_PORT}", f"http://127.0.0.1:{DECODE_PORT}"
        args, wait = parse_all(["--pd-disaggregation", "--prefill", pre, str(BOOTSTRAP_PORT),
                                "--decode", dec, "--port", str(DEMO_ROUTER_PORT),
                                "--log-level", "warn", *argv])  # fmt: skip
    except LaunchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    log_dir = os.path.join(env.cache_dir(), "demo-pd")
    os.makedirs(log_dir, exist_ok=True)
    prefill_flags, decode_flags = server_args(demo_model_path())
    servers = [
        DemoServer(prefill_flags, os.path.join(log_dir, "prefill.log"), PREFILL_PORT, 900),
        DemoServer(decode_flags, os.path.join(log_dir, "decode.log"), DECODE_PORT, 900),
    ]
    try:
        error = start_all(servers)
        if error:
            print(f"{PROG}: error: a demo server did not start: {error}", file=sys.stderr)
            return 1
        print("\n".join(_try_lines(f"http://127.0.0.1:{DEMO_ROUTER_PORT}", dec)), flush=True)
        return run_router(args, ready_wait_secs=wait)
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
