"""Every environment variable sglang-dcp reads, in one place (prefix ``SGLANG_DCP_``)."""

from __future__ import annotations

import os


def cache_dir() -> str:
    """Where generated artifacts (the demo's tiny model) live. ``SGLANG_DCP_CACHE_DIR``."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "sglang_dcp")
    return os.environ.get("SGLANG_DCP_CACHE_DIR", default)


def trace_dir() -> str | None:
    """Directory holding the Mooncake traces, if set. ``SGLANG_DCP_TRACE_DIR``."""
    return os.environ.get("SGLANG_DCP_TRACE_DIR") or None


# Set by ``python -m sglang_dcp.launch_server`` to the JSON of ``sglang.options.DcpOptions``
# (the ``--dcp-*`` flags). SGLang spawns the DP controller with the launcher's environment, so
# this is how the flags reach the planner there; unset (or policy "off") means SGLang's own
# ``--load-balance-method`` dispatches.
SERVE_OPTIONS_VAR = "SGLANG_DCP_SERVE_OPTIONS"


def serve_options_json() -> str | None:
    """The launcher's ``--dcp-*`` flags as JSON, if set. ``SGLANG_DCP_SERVE_OPTIONS``."""
    return os.environ.get(SERVE_OPTIONS_VAR) or None


def planner_log() -> bool:
    """Log every planner admit/finish at INFO in the DP controller. ``SGLANG_DCP_PLANNER_LOG=1``.

    Read-only view of the planner's state for tests and operators (otherwise DEBUG).
    """
    return os.environ.get("SGLANG_DCP_PLANNER_LOG", "") not in ("", "0", "false")


def poison_moved() -> bool:
    """Overwrite the home's copy of shipped KV with NaN right after each move.
    ``SGLANG_DCP_POISON_MOVED=1``.

    A debugging and test switch: the home's slots go back to SGLang's allocator at the move and
    keep their old bytes until reused, so a bug that still reads them would go unnoticed; with
    the poison it turns every affected output into garbage.
    """
    return os.environ.get("SGLANG_DCP_POISON_MOVED", "") not in ("", "0", "false")


def metadata_glue_graph() -> bool:
    """SGLang's ``SGLANG_ENABLE_METADATA_GLUE_GRAPH`` (0.5.21 ``environ.py``: off by default)."""
    return os.environ.get("SGLANG_ENABLE_METADATA_GLUE_GRAPH", "").strip().lower() in (
        "1", "true", "yes", "on",
    )  # fmt: skip


INJECT_MOVE_FAILURE_VAR = "SGLANG_DCP_INJECT_MOVE_FAILURE"


INJECT_MOVE_FAILURE_RID_VAR = "SGLANG_DCP_INJECT_MOVE_FAILURE_RID"


def inject_move_failure_rid() -> tuple[str, int] | None:
    """Fail every shard move of the requests whose id starts with ``PREFIX`` that starts at token
    ``T`` or later (testing only): ``SGLANG_DCP_INJECT_MOVE_FAILURE_RID=PREFIX@T``. With prefill
    into shards, ``T`` > 0 fails a request mid-prefill after its first pieces shipped."""
    text = os.environ.get(INJECT_MOVE_FAILURE_RID_VAR, "").strip()
    if not text:
        return None
    prefix, _, token = text.rpartition("@")
    if not prefix or not token.isdigit():
        raise ValueError(
            f"{INJECT_MOVE_FAILURE_RID_VAR}={text!r}: set it to PREFIX@TOKEN (e.g. fail-@64: "
            "moves of rids starting with 'fail-' from token 64 on fail), or unset it"
        )
    return prefix, int(token)


INJECT_PD_LANDING_FAILURE_VAR = "SGLANG_DCP_INJECT_PD_LANDING_FAILURE"


def _prompt_len_switch(var: str) -> int | None:
    """A PD fault switch set to a prompt length in tokens; ``None`` when unset."""
    text = os.environ.get(var, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{var}={text!r}: set it to a prompt length in tokens (e.g. 1300), "
                         "or unset it")  # fmt: skip
    return int(text)


def inject_pd_landing_failure() -> int | None:
    """PD decode (testing only): ``SGLANG_DCP_INJECT_PD_LANDING_FAILURE=N`` makes the prefill
    server's transfer to the first holder of every request with an ``N``-token prompt fail
    (``pd_landing.py``), as a failed mooncake transfer would."""
    return _prompt_len_switch(INJECT_PD_LANDING_FAILURE_VAR)


INJECT_PD_LANDING_DELAY_VAR = "SGLANG_DCP_INJECT_PD_LANDING_DELAY"


def inject_pd_landing_delay() -> tuple[int, int] | None:
    """PD decode (testing only): ``SGLANG_DCP_INJECT_PD_LANDING_DELAY=N@S`` makes the prefill
    server hold the transfer of every request with an ``N``-token prompt placed over several
    decode ranks for ``S`` seconds, or until the room fails (``pd_cleanup.hold_send``): an
    abort or a dead prefill server then lands mid-transfer."""
    text = os.environ.get(INJECT_PD_LANDING_DELAY_VAR, "").strip()
    if not text:
        return None
    n, _, s = text.partition("@")
    if not (n.isdigit() and s.isdigit() and int(s) > 0):
        raise ValueError(
            f"{INJECT_PD_LANDING_DELAY_VAR}={text!r}: set it to PROMPT_TOKENS@SECONDS (e.g. "
            "1300@120: prompts of 1300 tokens wait up to 120 s mid-transfer), or unset it"
        )
    return int(n), int(s)


INJECT_PD_LANDING_NO_ROOM_VAR = "SGLANG_DCP_INJECT_PD_LANDING_NO_ROOM"


def inject_pd_landing_no_room() -> int | None:
    """PD decode (testing only): ``SGLANG_DCP_INJECT_PD_LANDING_NO_ROOM=N``: the holders of
    every request with an ``N``-token prompt find no free KV slots for their ranges
    (``pd_cleanup.no_room``), as when SGLang's pool disagrees with the planner's books."""
    return _prompt_len_switch(INJECT_PD_LANDING_NO_ROOM_VAR)


def inject_move_failure() -> float:
    """Fail this fraction of shard moves (testing only). ``SGLANG_DCP_INJECT_MOVE_FAILURE=P``.

    Which moves fail is a pure function of each move (request id, ranks, token range), so every
    rank agrees and a rerun with the same request ids fails the same moves
    (``exchange.faults``). A failed move goes through the transfer's real failure handling: the
    range stays on its home.
    """
    text = os.environ.get(INJECT_MOVE_FAILURE_VAR, "").strip()
    if not text:
        return 0.0
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0.0 <= p <= 1.0:
        raise ValueError(
            f"{INJECT_MOVE_FAILURE_VAR}={text!r}: set it to a fraction of shard moves to fail, "
            "between 0 and 1 (e.g. 0.5), or unset it"
        )
    return p


def test_migrate() -> bool:
    """Testing only: the DP controller asks to migrate one guest shard of every split request
    once it decodes (after its home's first report), to a rank that holds none of its KV
    (``defrag.probe_move``). ``SGLANG_DCP_TEST_MIGRATE=1``."""
    return os.environ.get("SGLANG_DCP_TEST_MIGRATE", "") not in ("", "0", "false")


def test_migrate_fail() -> str:
    """Testing only: migrations away from a guest of requests whose id starts with this prefix
    fail mid-copy (the bytes arrive corrupted, the receiver's checksum refuses them).
    ``SGLANG_DCP_TEST_MIGRATE_FAIL=PREFIX``; empty: none."""
    return os.environ.get("SGLANG_DCP_TEST_MIGRATE_FAIL", "").strip()
