"""Quiet startup: SGLang's import noise and our own hook lines are DEBUG; child processes do
not print the quantization modules' CUDA-only import warnings."""

import logging

from sglang_dcp.sglang import quiet


def test_noise_is_demoted_and_other_lines_pass(caplog):
    quiet.install()
    caplog.set_level(logging.INFO)
    reg = logging.getLogger("sglang.srt.plugins.hook_registry")
    reg.info("Applied %d hook(s) to %s (from: %s)", 1, "x.y", "unknown")
    reg.info("Registered hook for %s", "x.y")
    logging.getLogger("sglang.srt.models.registry").warning("Ignore import error when loading m")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["Registered hook for x.y"]


def test_child_warnings_keep_what_the_user_set():
    env = {"PYTHONWARNINGS": "error::DeprecationWarning"}
    quiet.quiet_child_warnings(env)
    quiet.quiet_child_warnings(env)  # idempotent
    assert env["PYTHONWARNINGS"] == "error::DeprecationWarning," + quiet.CHILD_WARNINGS
    empty: dict = {}
    quiet.quiet_child_warnings(empty)
    assert empty["PYTHONWARNINGS"] == quiet.CHILD_WARNINGS
