"""A faster Triton interpreter (``TRITON_INTERPRET=1``, CPU only): the same patching, without
re-scanning ``triton.language`` on every call.

On every call of a ``@triton.jit`` function, the kernel's programs and each device-function call
inside them (``tl.sum``, ``tl.cdiv`` and our own helpers are such functions), Triton's
interpreter patches ``triton.language`` for the call: ``_patch_builtin`` lists each module with
``inspect.getmembers`` (sorted, every attribute) to find its builtins. On this project's
kernels that listing was a quarter of an interpreted run (Triton 3.7.1: 57 of 224 s of one
rank of ``test/distributed/test_backend_graph.py``; 138,797 listings for 24,200 calls).

``install`` replaces ``_patch_builtin`` with one that lists each module's builtins once and
then patches those whose attribute still holds the builtin, which is what the original patches
(a builtin an outer call already replaced is a wrapper, not a builtin, and is left alone):
the same attributes get the same wrappers, and the same scope restores them. Compiled kernels
(a GPU) never reach this code. If the interpreter's internals are not the ones this was written
against, nothing is replaced."""

from __future__ import annotations

import inspect


def install() -> bool:
    """Replace the interpreter's ``_patch_builtin`` (once); ``False`` if its internals differ."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter as interp
    except ImportError:  # pragma: no cover - Triton is a dependency
        return False
    original = getattr(interp, "_patch_builtin", None)
    if getattr(original, "_sglang_dcp_cached", False):
        return True
    if original is None or not hasattr(interp, "_patch_attr") or not hasattr(tl.core,
                                                                             "is_builtin"):
        return False
    params = list(inspect.signature(original).parameters)
    if params != ["pkg", "builder", "scope"]:
        return False
    builtins: dict[object, list[tuple[str, object]]] = {}  # module or class -> its builtins
    patch_attr, is_builtin = interp._patch_attr, tl.core.is_builtin

    def _patch_builtin(pkg, builder, scope):
        members = builtins.get(pkg)
        if members is None:
            members = builtins[pkg] = [(n, m) for n, m in inspect.getmembers(pkg)
                                       if is_builtin(m)]
        for name, member in members:
            if getattr(pkg, name, None) is member:  # not already patched by an outer call
                patch_attr(pkg, name, member, builder, scope)

    _patch_builtin._sglang_dcp_cached = True
    _patch_builtin.__wrapped_original__ = original
    interp._patch_builtin = _patch_builtin
    return True
