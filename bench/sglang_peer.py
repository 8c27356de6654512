"""SGLang 0.5.21's own Triton decode kernel, the peer of ``bench/kernels.py``.

``load(wheel=None)`` returns ``Peer(decode_attention_fwd, get_num_kv_splits_triton,
mla_decode_kv_splits_cap, source)``:

- from the installed SGLang when ``wheel`` is None (this repo's venv; on CPU the CPU
  compatibility hooks are installed first);
- from the pinned wheel file otherwise (a GPU machine where SGLang is not installed and cannot
  be: its import chain pulls in a server's worth of packages). Only three source files are used,
  unchanged: ``sglang/kernels/ops/attention/{decode_attention,metadata,score_mod}.py``, extracted
  to a temp folder (Triton reads a kernel's source from its file) and imported under their own
  module names. **Stand-ins** take the place of the four things they import from the rest of
  SGLang, with SGLang 0.5.21's values on an NVIDIA GPU: ``sglang.srt.environ.envs`` (the three
  variables they read, at their defaults unless set in the environment), ``sglang.srt.utils``
  (``is_hip`` False, ``is_gfx95_supported``/``is_gfx1250_supported`` False,
  ``get_device_core_count`` the SM count), ``sglang.srt.runtime_context.get_exec`` (raises
  ``ValueError``, as it does outside a server) and ``_mla_decode_kv_splits_cap`` (its source,
  taken from the wheel's ``triton_backend.py`` by name and compiled alone, with a copy of
  ``next_power_of_2``). Anything else those
  files import from SGLang fails the load with ``ImportError`` naming it.

Benchmark use only: nothing in ``sglang_dcp`` imports this.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import tempfile
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

WHEEL_SHA256 = "96c029f75dec99baa33a5db3d41b1bebefdd6bcfba3a2f7c807fe1cf49a87c20"  # = Makefile
KERNEL_FILES = ("score_mod", "metadata", "decode_attention")
ATTN = "sglang/kernels/ops/attention"
BACKEND = "sglang/srt/layers/attention/triton_backend.py"
ENV_DEFAULTS = {  # sglang/srt/environ.py in 0.5.21
    "SGLANG_TRITON_DECODE_ATTN_STATIC_KV_SPLITS": False,
    "SGLANG_MLA_DECODE_TUNE": False,
    "SGLANG_FORCE_LEAN_GRID_CU_MULT": 1.0,
}


@dataclass(frozen=True)
class Peer:
    decode_attention_fwd: Callable
    get_num_kv_splits_triton: Callable
    mla_decode_kv_splits_cap: Callable[[int, int, int], int]
    source: str  # "installed sglang X" | "wheel <file> (sha256 ok), stand-ins for ..."


def load(wheel: str | os.PathLike | None = None) -> Peer:
    if wheel is None:
        return _installed()
    return _from_wheel(Path(wheel))


def _installed() -> Peer:
    import torch

    if not torch.cuda.is_available():
        from sglang_dcp.sglang import cpu_compat

        cpu_compat.install()
    import sglang
    from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd
    from sglang.kernels.ops.attention.metadata import get_num_kv_splits_triton
    from sglang.srt.layers.attention.triton_backend import _mla_decode_kv_splits_cap

    return Peer(decode_attention_fwd, get_num_kv_splits_triton, _mla_decode_kv_splits_cap,
                f"installed sglang {sglang.__version__}")  # fmt: skip


class _Env:
    def __init__(self, name: str, default) -> None:
        self.name, self.default = name, default

    def get(self):
        raw = os.environ.get(self.name)
        if raw is None:
            return self.default
        if isinstance(self.default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        return type(self.default)(raw)


class _Envs:
    def __getattr__(self, name: str):
        if name not in ENV_DEFAULTS:
            raise ImportError(f"sglang_peer stand-in: envs.{name} is not provided; add it to "
                              "ENV_DEFAULTS with SGLang 0.5.21's default")  # fmt: skip
        return _Env(name, ENV_DEFAULTS[name])


def _get_exec():
    raise ValueError("sglang_peer stand-in: no server configuration is published")


def _stand_ins() -> dict[str, types.ModuleType]:
    import torch

    def core_count(device_id: int = 0) -> int:  # as sglang.srt.utils: 0 without a GPU
        if not torch.cuda.is_available():
            return 0
        return torch.cuda.get_device_properties(device_id).multi_processor_count

    mods = {name: types.ModuleType(name) for name in (
        "sglang", "sglang.kernels", "sglang.kernels.ops", "sglang.kernels.ops.attention",
        "sglang.srt", "sglang.srt.environ", "sglang.srt.utils", "sglang.srt.runtime_context",
    )}  # fmt: skip
    for mod in mods.values():
        mod.__path__ = []  # nothing else is found under them: an unknown import fails loudly
    mods["sglang.srt.environ"].envs = _Envs()
    utils = mods["sglang.srt.utils"]
    utils.is_hip = lambda: False
    utils.is_gfx95_supported = lambda: False
    utils.is_gfx1250_supported = lambda: False
    utils.get_device_core_count = core_count
    mods["sglang.srt.runtime_context"].get_exec = _get_exec
    return mods


def _from_wheel(wheel: Path) -> Peer:
    if not wheel.is_file():
        raise FileNotFoundError(
            f"{wheel}: no such wheel (make install downloads it to .cache/wheels)"
        )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ValueError(f"{wheel}: sha256 {digest} is not the pinned sglang 0.5.21 wheel's")
    if "sglang" in sys.modules:
        raise RuntimeError("sglang is already imported: load the peer from the wheel in a fresh "
                           "process, or use the installed one (wheel=None)")  # fmt: skip
    src = Path(tempfile.mkdtemp(prefix="sglang-peer-"))
    with zipfile.ZipFile(wheel) as zf:
        for name in KERNEL_FILES:
            (src / f"{name}.py").write_bytes(zf.read(f"{ATTN}/{name}.py"))
        backend_src = zf.read(BACKEND).decode()
    sys.modules.update(_stand_ins())
    loaded = {}
    for name in KERNEL_FILES:
        full = f"sglang.kernels.ops.attention.{name}"
        spec = importlib.util.spec_from_file_location(full, src / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)
        loaded[name] = mod
    return Peer(loaded["decode_attention"].decode_attention_fwd,
                loaded["metadata"].get_num_kv_splits_triton, _mla_cap(backend_src),
                f"wheel {wheel.name} (sha256 ok): kernel files unchanged, stand-ins for envs, "
                "is_hip/gfx checks, get_device_core_count, get_exec, _mla_decode_kv_splits_cap "
                "source")  # fmt: skip


def _mla_cap(backend_src: str) -> Callable[[int, int, int], int]:
    """``_mla_decode_kv_splits_cap`` and the constant it reads, compiled from the wheel's source
    (importing ``triton_backend`` would pull in the server)."""
    import triton

    tree = ast.parse(backend_src)
    keep = [
        n for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name == "_mla_decode_kv_splits_cap")
        or (isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_MLA_DECODE_MIN_BLOCK_KV" for t in n.targets))
    ]  # fmt: skip
    if len(keep) != 2:
        raise ImportError("triton_backend.py: _mla_decode_kv_splits_cap or "
                          "_MLA_DECODE_MIN_BLOCK_KV not found")  # fmt: skip
    ns = {"triton": triton, "next_power_of_2": lambda n: 1 << (n - 1).bit_length() if n > 0 else 1}
    exec(compile(ast.Module(body=keep, type_ignores=[]), BACKEND, "exec"), ns)
    return ns["_mla_decode_kv_splits_cap"]
