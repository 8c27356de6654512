"""The ``patches/`` series against the pinned SGLang wheel: list it, check it, report it.

``patches/NNNN-*.patch`` are unified diffs with ``a/sglang/...`` / ``b/sglang/...`` paths, applied
in file-name order with ``patch -p1`` to the unpacked wheel (``make patch``). ``check()`` proves,
on a scratch copy of only the files the series touches (fast: no full unpack), that every patch
applies with no fuzz, that the patched Python files compile, and that reversing the series in
reverse order gives back the wheel's bytes exactly. Standard library only (no SGLang import), so
``make check-patches`` and the tests can run it before anything is installed.

    python sglang_dcp/sglang/patch_series.py check --wheel WHEEL patches/*.patch
"""

from __future__ import annotations

import argparse
import hashlib
import py_compile
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# `patch` options shared by every call: never prompt, refuse fuzzy matches, leave no .orig files.
_PATCH = ["patch", "-p1", "--batch", "--fuzz=0", "--no-backup-if-mismatch"]


class PatchError(RuntimeError):
    pass


def series(patch_dir: str | Path) -> list[Path]:
    """The series in application order (file-name order: ``0001-...``, ``0002-...``)."""
    return sorted(Path(patch_dir).glob("*.patch"))


def touched_files(patch: str | Path) -> list[str]:
    """Wheel-relative paths (``sglang/...``) that ``patch`` changes, in order, without repeats."""
    out: list[str] = []
    for line in Path(patch).read_text().splitlines():
        if not line.startswith(("--- ", "+++ ")):
            continue
        name = line[4:].split("\t", 1)[0].strip()
        if name == "/dev/null":
            continue
        if not name.startswith(("a/", "b/")):
            raise PatchError(f"{patch}: path {name!r} is not a/... or b/... (diff -u a b)")
        rel = name[2:]
        if rel not in out:
            out.append(rel)
    if not out:
        raise PatchError(f"{patch}: no file headers; not a unified diff")
    return out


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_patch(args: list[str], patch: Path, tree: Path) -> None:
    with open(patch, "rb") as f:
        proc = subprocess.run(
            _PATCH + args + ["-d", str(tree)], stdin=f, capture_output=True, text=True
        )
    if proc.returncode != 0:
        what = "reverse" if "-R" in args else "apply"
        raise PatchError(
            f"{patch.name} does not {what} cleanly ({' '.join(args) or 'for real'}):\n"
            f"{proc.stdout}{proc.stderr}"
        )


def apply(wheel: str | Path, patches: list[Path], tree: str | Path) -> dict[str, bytes | None]:
    """Write the wheel's copies of the touched files under ``tree`` and apply the series there.

    Each patch is dry-run first, then applied, with no fuzz. Returns the wheel's original bytes
    per touched path (None: the series creates the file). Raises ``PatchError``.
    """
    tree = Path(tree)
    files: list[str] = []
    for p in patches:
        files += [f for f in touched_files(p) if f not in files]
    original: dict[str, bytes | None] = {}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel in files:
            original[rel] = zf.read(rel) if rel in names else None
            if original[rel] is not None:
                (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                (tree / rel).write_bytes(original[rel])
    for p in patches:
        _run_patch(["--dry-run"], Path(p), tree)
        _run_patch([], Path(p), tree)
    return original


def check(wheel: str | Path, patches: list[Path]) -> list[str]:
    """Apply, compile and reverse the series on the wheel's copies of the touched files.

    Returns the touched paths; raises ``PatchError`` naming the patch and ``patch``'s output.
    """
    patches = [Path(p) for p in patches]
    tree = Path(tempfile.mkdtemp(prefix="sglang-dcp-patches-"))
    try:
        original = apply(wheel, patches, tree)
        for rel in original:
            if rel.endswith(".py") and (tree / rel).exists():
                try:
                    py_compile.compile(str(tree / rel), doraise=True)
                except py_compile.PyCompileError as e:
                    raise PatchError(f"patched {rel} does not compile: {e.msg}") from None
        for p in reversed(patches):
            _run_patch(["-R", "--dry-run"], p, tree)
            _run_patch(["-R", "--remove-empty-files"], p, tree)
        for rel, data in original.items():
            now = (tree / rel).read_bytes() if (tree / rel).exists() else None
            if now != data:
                raise PatchError(f"reversing the series did not restore {rel} byte for byte")
        return list(original)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="patch_series.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="apply, compile and reverse the series on the wheel's files")
    c.add_argument("--wheel", required=True)
    c.add_argument("patches", nargs="+")
    args = parser.parse_args(argv)
    try:
        files = check(args.wheel, [Path(p) for p in args.patches])
    except PatchError as e:
        print(f"check-patches: FAILED: {e}", file=sys.stderr)
        return 1
    names = ", ".join(Path(p).name for p in args.patches)
    print(f"check-patches: OK: {names} apply, compile and reverse cleanly ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
