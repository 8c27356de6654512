"""Layering rules: only sglang_dcp/sglang imports SGLang; pure logic imports no torch.distributed."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "sglang_dcp"
PURE = ["planner", "sim", "types.py", "exchange/route.py", "exchange/scenario.py",
        "exchange/wire.py", "exchange/extend.py", "exchange/extend_scenario.py",
        "exchange/extend_tiles.py", "sglang/layout.py"]


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _py_files(rel: str):
    p = PKG / rel
    return [p] if p.is_file() else sorted(p.rglob("*.py"))


def test_only_the_glue_package_imports_sglang():
    offenders = []
    for path in PKG.rglob("*.py"):
        if (PKG / "sglang") in path.parents:
            continue
        for name in _imports(path):
            if name == "sglang" or name.startswith("sglang."):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def test_pure_modules_import_no_torch_or_sglang():
    offenders = []
    for rel in PURE:
        for path in _py_files(rel):
            for name in _imports(path):
                root = name.split(".")[0]
                if root in {"torch", "sglang", "triton"}:
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def test_test_module_basenames_are_unique():
    """The test folders are not packages, so pytest imports each test file by its basename:
    two ``test_x.py`` in different folders break collection of the whole suite."""
    seen: dict[str, pathlib.Path] = {}
    for path in sorted((ROOT / "test").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Like ``_imports``, plus ``from a import b`` as ``a.b`` (``b`` may be a module)."""
    names = _imports(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_shipped_modules_never_import_the_test_harness():
    """``sglang_dcp.testing`` drives real servers for the tests; the package itself (launchers,
    the demo, the router) must work without it, so the harness imports shipped code and never
    the reverse (no import cycle between them either)."""
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        if (PKG / "testing") in path.parents:
            continue
        for name in _imported_modules(path):
            if name == "sglang_dcp.testing" or name.startswith("sglang_dcp.testing."):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def test_the_step_path_modules_do_not_import_back_into_datapath():
    """``datapath`` (the scheduler side) imports the header, prefill-into-shards and shipping
    modules; none of them imports it back, even lazily (they reach the rank's runtime through
    ``context``), so the four form no cycle."""
    offenders = []
    for name in ("header.py", "prefill_shards.py", "shipping.py", "entries.py", "step.py"):
        path = PKG / "sglang" / name
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "sglang_dcp.sglang.datapath":
                offenders.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "sglang_dcp.sglang" and any(
                a.name == "datapath" for a in node.names
            ):
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


def test_modules_stay_small():
    """One concept per file: every shipped module (the package, the kernels, the benchmarks) is
    at most 300 lines."""
    files = [*PKG.rglob("*.py"), *(ROOT / "kernels").rglob("*.py"), *(ROOT / "bench").glob("*.py")]
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(files)
            if (n := len(p.read_text().splitlines())) > 300]
    assert not long, long
