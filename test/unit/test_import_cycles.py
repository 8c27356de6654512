"""The SGLang glue's modules form no import cycle (issue 23 item 8), counting every import: the
module-level ones and those inside functions (a lazy import hides a cycle from Python, not from
a reader: data flows one way, the data path never reaches back into its callers)."""

from __future__ import annotations

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[2] / "sglang_dcp" / "sglang"
PREFIX = "sglang_dcp.sglang"


def _deps(path: pathlib.Path, names: set[str], *, lazy: bool) -> set[str]:
    """The glue modules ``path`` imports (``lazy``: inside functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = ast.walk(tree) if lazy else iter(tree.body)
    out: set[str] = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            if n.module == PREFIX:
                out |= {a.name for a in n.names}
            elif n.module.startswith(PREFIX + "."):
                out.add(n.module.split(".")[2])
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[2] for a in n.names if a.name.startswith(PREFIX + ".")}
    return out & names


def graph(*, lazy: bool) -> dict[str, set[str]]:
    names = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    return {n: _deps(PKG / f"{n}.py", names, lazy=lazy) - {n} for n in sorted(names)}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_cycle_in_the_glue():
    assert cycles(graph(lazy=False)) == []


def test_no_import_cycle_in_the_glue_even_through_lazy_imports():
    g = graph(lazy=True)
    assert {"datapath", "header", "prefill_shards", "shipping"} <= set(g)
    assert cycles(g) == []
