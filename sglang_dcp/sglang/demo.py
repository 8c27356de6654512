"""``--demo``: the embedded default server, as presets that yield to what the user typed.

The demo adds flags (``DEMO_ARGS``) only where the user typed nothing for them, and drops those
that do not apply to what the user chose: the planner's budget and shard size go when the user
picks SGLang's own dispatch (``--load-balance-method round_robin``, ``--dcp-policy off``), the
shard size when the policy is not ``dcp``. ``--tp-size`` and ``--dp-size`` follow each other
(one given: the other takes its value, the demo's attention TP of 1). Errors that involve a flag
the demo set say so (``demo_note``). Pure Python: no SGLang import.
"""

from __future__ import annotations

# --demo-model NAME -> the module whose build(out_dir, seed) writes that checkpoint
DEMO_MODELS = {
    "tiny-qwen3-moe": "sglang_dcp.tiny_model",  # GQA
    "tiny-deepseek-v3": "sglang_dcp.tiny_deepseek",  # MLA, grouped top-k, shared expert
}
DEFAULT_DEMO_MODEL = "tiny-qwen3-moe"
DEMO_DP_SIZE = 4
# A small planner budget per rank, so that a prompt of a few thousand tokens cannot sit on one
# rank and is spread over several (SGLang's own pools stay larger: the home prefills it whole).
DEMO_KV_CAPACITY = 1024
DEMO_POOL_TOKENS = 32768  # each rank's SGLang pool
DEMO_ARGS = [
    "--device", "cpu",
    "--tp-size", str(DEMO_DP_SIZE),
    "--dp-size", str(DEMO_DP_SIZE),
    "--enable-dp-attention",
    # KV pools sized in tokens, not as a share of free memory: SGLang measures free host memory
    # machine-wide before and after loading, so another server loading meanwhile failed the
    # demo's former 0.05 ("Loaded weights leave no GPU memory for the KV cache"). The fraction
    # only bounds that check; each rank's pool is --max-total-tokens (25 MiB of tiny-model KV).
    "--max-total-tokens", str(DEMO_POOL_TOKENS),
    "--mem-fraction-static", "0.9",
    # SGLang's "auto" dtype would run the float32 checkpoint in float16; keep it exact.
    "--dtype", "float32",
    # idle DP ranks would otherwise spin on their per-iteration collectives
    "--sleep-on-idle",
    "--dcp-kv-capacity", str(DEMO_KV_CAPACITY),
    "--dcp-min-shard-tokens", "128",
    "--host", "127.0.0.1",
    "--port", "30000",
]  # fmt: skip
PLANNER_ONLY = ("--dcp-kv-capacity", "--dcp-min-shard-tokens")
DCP_ONLY = ("--dcp-min-shard-tokens",)


def _pairs(args: list[str]) -> list[tuple[str, str | None]]:
    """``DEMO_ARGS`` as (flag, value or None)."""
    out, i = [], 0
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append((args[i], args[i + 1]))
            i += 2
        else:
            out.append((args[i], None))
            i += 1
    return out


def typed_flags(argv: list[str]) -> dict[str, str | None]:
    """Flags in ``argv`` -> their value (``--x=v`` or ``--x v``; None without one)."""
    out: dict[str, str | None] = {}
    for i, a in enumerate(argv):
        if not a.startswith("--"):
            continue
        name, eq, value = a.partition("=")
        if eq:
            out[name] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[name] = argv[i + 1]
        else:
            out[name] = None
    return out


def demo_argv(user_argv: list[str], model_path: str) -> tuple[list[str], set[str]]:
    """The demo's flags that apply, then ``user_argv``; and the flags the demo set."""
    typed = typed_flags(user_argv)
    lb = typed.get("--load-balance-method")
    policy = typed.get("--dcp-policy")
    planner = lb in (None, "dcp") and policy != "off"
    dcp = planner and policy in (None, "dcp")
    added: list[str] = []
    for flag, value in _pairs(DEMO_ARGS):
        if flag in typed:
            continue
        if (flag in PLANNER_ONLY and not planner) or (flag in DCP_ONLY and not dcp):
            continue
        if flag == "--tp-size" and "--dp-size" in typed:
            value = typed["--dp-size"]
        if flag == "--dp-size" and "--tp-size" in typed:
            value = typed["--tp-size"]
        added += [flag] if value is None else [flag, value]
    if "--model-path" not in typed:
        added += ["--model-path", model_path]
    return added + user_argv, {a for a in added if a.startswith("--")}


def demo_note(message: str, demo_set: set[str]) -> str:
    """``message`` plus which of the flags it names the demo set (not the user)."""
    named = sorted(f for f in demo_set if f in message)
    if not named:
        return message
    return f"{message} ({', '.join(named)} set by --demo)"
