"""``python -m sglang_dcp.demo_client``: send prompts of several lengths to a DCP server and show
where each one's KV went (``meta_info["dcp"]``).

Stdlib only. Prompts are random token ids (``input_ids``), so it works with any model; greedy
decoding, ``--max-new-tokens`` tokens each. Example against ``make demo``::

    python -m sglang_dcp.demo_client --url http://127.0.0.1:30000 --lengths 40 900 3000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.error
import urllib.request


def generate(url: str, ids: list[int], max_new_tokens: int, timeout: float) -> dict:
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True},
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/generate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def describe(n: int, out: dict, seconds: float) -> str:
    meta = out.get("meta_info", {})
    dcp = meta.get("dcp")
    if not dcp:
        return f"{n:>6} tokens: rank {meta.get('dp_rank')} (no placement reported)"
    shards = ", ".join(f"[{a}, {b}) on rank {r}" for r, a, b in dcp.get("shards", []))
    return (
        f"{n:>6} tokens: home rank {dcp['home_rank']}, degree {dcp['degree']}, "
        f"KV {shards}  ({seconds:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sglang_dcp.demo_client", description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:30000", help="server URL")
    ap.add_argument("--lengths", type=int, nargs="+", default=[40, 900, 3000], metavar="N",
                    help="prompt lengths in tokens (default: 40 900 3000)")  # fmt: skip
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=512, help="token ids are drawn from [3, vocab)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.lengths) or args.vocab < 4:
        ap.error("--lengths must be >= 1 and --vocab >= 4")
    rng = random.Random(args.seed)
    for n in args.lengths:
        ids = [rng.randrange(3, args.vocab) for _ in range(n)]
        t0 = time.monotonic()
        try:
            out = generate(args.url, ids, args.max_new_tokens, args.timeout)
        except urllib.error.HTTPError as e:
            print(f"{n:>6} tokens: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}")
            continue
        except OSError as e:
            print(f"{args.url}: {e}", file=sys.stderr)
            return 1
        print(describe(n, out, time.monotonic() - t0), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
