"""Who mutates a rank's runtime (issue 23 item 8): the data path only. The hooks, PD landing and
piece adoption call ``runtime_api.RuntimeApi``'s methods; each of their own slots on the runtime
is written by its module alone; no module outside the data path rewrites a request's layout."""

from __future__ import annotations

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[2] / "sglang_dcp" / "sglang"
DATA_PATH = {"datapath.py", "runtime_api.py", "entries.py", "header.py", "prefill_shards.py",
             "shipping.py", "step_build.py",
             "selfcheck_rank.py"}  # drives the data path over its own namespace, not a runtime
OWN_SLOTS = {"pd_landing.py": {"landing"}, "pd_cleanup.py": {"landing_held"},
             "piece_adopt.py": {"adoptions", "adopt_wait"},
             "radix_pieces.py": {"piece_cache"}}  # fmt: skip
MUTATORS = {"append", "extend", "insert", "pop", "popitem", "remove", "clear", "update",
            "setdefault", "add", "discard"}  # fmt: skip
RUNTIME_NAMES = {"rt", "runtime"}


def _runtime_attr(node: ast.AST) -> str | None:
    """``x`` of ``rt.x``, ``rt.x[k]``, ``rt.x.y`` (the runtime's slot the node reaches)."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        inner = node.value
        if isinstance(node, ast.Attribute) and isinstance(inner, ast.Name):
            return node.attr if inner.id in RUNTIME_NAMES else None
        node = inner
    return None


def writes(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, slot) of every write into a runtime slot, and every ``.layout =``."""
    out = []
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(n, ast.Assign):
            targets = n.targets
        elif isinstance(n, (ast.AugAssign, ast.AnnAssign)):
            targets = [n.target]
        elif isinstance(n, ast.Delete):
            targets = n.targets
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            if n.func.attr in MUTATORS and (slot := _runtime_attr(n.func.value)):
                out.append((n.lineno, slot))
        for t in targets:
            for x in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if (slot := _runtime_attr(x)) is not None:
                    out.append((n.lineno, slot))
                elif isinstance(x, ast.Attribute) and x.attr == "layout":
                    out.append((n.lineno, "<a request's layout>"))
    return out


def test_the_checker_sees_writes(tmp_path):
    src = ("rt.home[k] = v\nrt.step = None\nrt.releases.append(r)\ndel rt.guests[k]\n"
           "h.layout = x\nrt.add_guest(k, g)\nx = rt.home[k]\n")  # fmt: skip
    p = tmp_path / "probe.py"
    p.write_text(src)
    assert sorted(writes(p)) == [(1, "home"), (2, "step"), (3, "releases"), (4, "guests"),
                         (5, "<a request's layout>")]  # fmt: skip


def test_only_the_data_path_mutates_the_runtime():
    offenders = []
    for path in sorted(PKG.glob("*.py")):
        if path.name in DATA_PATH:
            continue
        own = OWN_SLOTS.get(path.name, set())
        offenders += [f"{path.name}:{line} writes {slot}" for line, slot in writes(path)
                      if slot not in own]  # fmt: skip
    assert not offenders, offenders
