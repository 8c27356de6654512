"""SGLang 0.5.21's PD disaggregation (``--disaggregation-mode prefill|decode``) on a machine
without CUDA: the settings the launcher adds, each announced in one log line and each yielding to
what the user typed. Found by running a prefill server, a decode server and smg's router on the
CPU development machine (``/work/shared/reference/sglang-0.5.21-pd-on-cpu.md``).

Both modes:
- ``--disaggregation-transfer-backend mooncake_tcp``: SGLang's default ``mooncake`` asks the
  transfer engine for RDMA devices; ``mooncake_tcp`` is the same engine over TCP
  (``arg_groups/pd_disaggregation_hook.py`` sets ``MC_FORCE_TCP=1``).

Decode:
- ``--no-enable-tp-lm-head-all-to-all``: SGLang turns the TP LM-head all-to-all on for pure-DP
  decode nodes (``arg_groups/overrides.py`` ``_tp_lm_head_all_to_all_default``); its op
  ``sglang::reg_all_to_all_single`` has no CPU kernel (``NotImplementedError`` at the first decode).
- ``--disaggregation-decode-retraction-backup none``: the default backup reserves host memory for
  HiCache after a 10 GiB reserve for the rest; the scheduler dies ("No host memory is left for
  HiCache ...") on a machine this size.

Prefill needs nothing here: its overlap path's ``torch.cuda.Event`` is fixed in
``cpu_compat.apply_sglang_fixes`` (a CPU event; CPU forwards finish before the host goes on).
Pure Python: no SGLang import.
"""

from __future__ import annotations

from collections.abc import Callable

# (mode it applies to or None for both, the flags that count as "the user set it", what we add, why)
_SETTINGS: list[tuple[str | None, tuple[str, ...], list[str], str]] = [
    (None, ("--disaggregation-transfer-backend",),
     ["--disaggregation-transfer-backend", "mooncake_tcp"],
     "mooncake without RDMA devices: the same transfer engine over TCP"),
    ("decode", ("--enable-tp-lm-head-all-to-all", "--no-enable-tp-lm-head-all-to-all"),
     ["--no-enable-tp-lm-head-all-to-all"],
     "the TP LM-head all-to-all op has no CPU kernel"),
    ("decode", ("--disaggregation-decode-retraction-backup",),
     ["--disaggregation-decode-retraction-backup", "none"],
     "the default host backup needs more than 10 GiB of free host memory"),
]  # fmt: skip


def disaggregation_mode(argv: list[str]) -> str:
    """``--disaggregation-mode`` as typed in ``argv`` (``null`` when absent)."""
    for i, a in enumerate(argv):
        if a == "--disaggregation-mode" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--disaggregation-mode="):
            return a.split("=", 1)[1]
    return "null"


def _say(line: str) -> None:
    print(line, flush=True)


def pd_cpu_argv(sglang_argv: list[str], announce: Callable[[str], None] = _say) -> list[str]:
    """``sglang_argv`` plus the CPU settings for its disaggregation mode (none outside PD).
    Call only on a machine without CUDA."""
    mode = disaggregation_mode(sglang_argv)
    if mode not in ("prefill", "decode"):
        return sglang_argv
    names = {a.split("=", 1)[0] for a in sglang_argv}
    added: list[str] = []
    for applies, typed, flags, why in _SETTINGS:
        if applies not in (None, mode) or names & set(typed):
            continue
        announce(f"[sglang-dcp] PD {mode} on CPU: {' '.join(flags)} ({why}; a value you pass wins)")
        added += flags
    return sglang_argv + added
