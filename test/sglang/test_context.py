"""One context object per scheduler process holds the rank's DCP state (``context.py``)."""

import ast
from pathlib import Path

import pytest

from sglang_dcp.sglang import context
from sglang_dcp.sglang.context import stats

PKG = Path(context.__file__).parent
# process-wide switches that are not a rank's state: the CPU import shim, plugin registration
ALLOWED_GLOBALS = {("cpu_compat.py", "_INSTALLED"), ("plugin.py", "_REGISTERED"),
                   ("context.py", "_CTX")}  # fmt: skip


def test_the_runtime_is_set_once_and_stats_live_in_the_context(monkeypatch):
    c = context.RankContext()
    monkeypatch.setattr(context, "_CTX", c)
    c.set_runtime("rt")
    with pytest.raises(RuntimeError, match="already has a DCP rank runtime"):
        c.set_runtime("again")
    assert stats() is c.stats
    old = context.use(context.RankContext())
    assert old is c and stats() is not c.stats


def test_no_other_module_rebinds_rank_state():
    found = set()
    for path in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Global):
                found |= {(path.name, n) for n in node.names}
    assert found <= ALLOWED_GLOBALS, found - ALLOWED_GLOBALS
