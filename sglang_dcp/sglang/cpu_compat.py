"""CPU compatibility for SGLang 0.5.21: the one place where sglang-dcp makes SGLang run on a
machine with no CUDA device. Nothing here acts when a CUDA device exists.

Three things cannot exist on a CPU-only machine and are stood in for here:

1. ``torchvision`` (PyPI 0.28.0 is a CUDA build). Its ``_C.so`` links ``libtorch_cuda.so`` and
   fails to load, after which ``import torchvision`` raises ``RuntimeError: operator
   torchvision::nms does not exist`` (its fake-op registrations need the op schema). transformers
   5.12.1 imports torchvision from ``image_utils`` and SGLang imports that at startup. We define
   the two op *schemas* (``nms``, ``qnms``) before torchvision is first imported; the ops have no
   CPU kernel, so calling them raises torch's own "no kernel for CPU" error. Nothing on the text
   serving path calls them.
2. ``sgl_kernel`` (PyPI ``sglang-kernel`` is CUDA-only; the CPU build ``sglang-kernel-cpu`` is not
   on PyPI). With ``SGLANG_USE_CPU_ENGINE=1`` SGLang imports CPU symbols from it at module import
   (``copy_all_layer_kv_cache_cpu``, ``assign_req_to_token_pool_cpu``, ...). We provide a stub
   package, only when no real ``sgl_kernel`` is installed: importing any name works, *calling* it
   raises ``NotImplementedError`` naming the symbol. On a CPU without AMX, SGLang uses the
   ``torch_native`` attention backend and calls none of them.
3. Upstream CPU bugs, fixed by ``apply_sglang_fixes()`` in every scheduler process (the plugin
   calls it), each with the symptom it fixes.

The import hooks are installed at interpreter start by ``sglang_dcp_cpu_compat.pth`` (written
into the environment's site-packages by ``make install``, i.e. ``install_pth()``), because SGLang spawns its scheduler, DP-controller and detokenizer processes
with the ``spawn`` start method and imports torchvision in each of them before any plugin runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

PTH_NAME = "sglang_dcp_cpu_compat.pth"
# .pth lines run at every interpreter start; stay silent if sglang_dcp was uninstalled.
PTH_LINE = (
    'import sys; exec("try:\\n import sglang_dcp.sglang.cpu_compat as m; m.install()\\n'
    'except ImportError:\\n pass")\n'
)

_STUBBED = "sgl_kernel"


def cuda_available() -> bool:
    """True when torch sees a CUDA device. Imports torch (callers are about to anyway)."""
    import torch

    return torch.cuda.is_available()


class _MissingKernel:
    """A ``sgl_kernel`` symbol that does not exist on this machine. Fails loudly when used."""

    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(
            f"{self._qualname} is a CUDA/CPU-extension kernel from sgl_kernel, which is not "
            "installed on this CPU-only machine (sglang_dcp.cpu_compat stands in for its imports "
            "only). Use a code path that does not need it (e.g. --attention-backend torch_native) "
            "or install sglang-kernel on a CUDA machine (make install-gpu)."
        )

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _MissingKernel(f"{self._qualname}.{name}")

    def __repr__(self) -> str:
        return f"<missing sgl_kernel symbol {self._qualname}>"


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _MissingKernel(f"{self.__name__}.{name}")


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []  # a package, so `import sgl_kernel.x` resolves through us too
        mod.__doc__ = "sglang_dcp.cpu_compat stub: no sgl_kernel on this CPU-only machine."
        mod.__version__ = "0.0.0+sglang_dcp_cpu_stub"
        mod.SGLANG_DCP_CPU_STUB = True
        return mod

    def exec_module(self, module) -> None:
        pass


class _CompatFinder(importlib.abc.MetaPathFinder):
    """Defines torchvision's op schemas before torchvision loads; stubs a missing sgl_kernel.

    Sits at the *end* of ``sys.meta_path`` for ``sgl_kernel`` (so a real install always wins)
    and peeks at ``torchvision`` imports without taking them over.
    """

    def __init__(self) -> None:
        self._cuda: bool | None = None
        self._tv_done = False

    def _no_cuda(self) -> bool:
        if self._cuda is None:
            self._cuda = cuda_available()
        return not self._cuda

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" and not self._tv_done:
            self._tv_done = True
            if self._no_cuda():
                _define_torchvision_schemas()
            return None  # let the normal finders load the real torchvision
        root = fullname.split(".", 1)[0]
        if root == _STUBBED and self._no_cuda():
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        return None


class _FrontRunner(importlib.abc.MetaPathFinder):
    """Sits first on ``sys.meta_path`` only to see torchvision imports before they load."""

    def __init__(self, finder: _CompatFinder) -> None:
        self._finder = finder

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            self._finder.find_spec(fullname)
        return None


def _define_torchvision_schemas() -> None:
    import torch

    try:
        lib = torch.library.Library("torchvision", "DEF")
        # Schemas copied from torchvision 0.28.0 csrc/ops/nms.cpp and quantized/qnms.cpp.
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
        return  # already defined (torchvision's own _C loaded, or defined before)
    _KEEP_ALIVE.append(lib)


_KEEP_ALIVE: list = []
_INSTALLED: _CompatFinder | None = None


def install() -> None:
    """Install the import hooks (idempotent). Cheap: torch is only imported on first use."""
    global _INSTALLED
    if _INSTALLED is not None:
        return
    finder = _CompatFinder()
    sys.meta_path.insert(0, _FrontRunner(finder))
    sys.meta_path.append(finder)
    _INSTALLED = finder


def is_stub(module: types.ModuleType) -> bool:
    return bool(getattr(module, "SGLANG_DCP_CPU_STUB", False))


def apply_sglang_fixes() -> list[str]:
    """Fix known SGLang 0.5.21 CPU bugs in this process. Returns the names of the fixes applied.

    Call after SGLang is importable; a no-op when a CUDA device exists.
    """
    if cuda_available():
        return []
    applied = []
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    # Upstream symptom: with --enable-dp-attention on CPU, ForwardBatch._pad_inputs_to_size
    # raises AttributeError: 'TorchNativeAttnBackend' object has no attribute
    # 'get_cpu_graph_seq_len_fill_value' (only intel_amx_backend.py defines it, returning 1).
    # The same for SGLang's triton backend, which runs on CPU under TRITON_INTERPRET=1 (slow;
    # the tests' second inner backend): its CUDA fill value, 1, as intel_amx's.
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    for cls in (TorchNativeAttnBackend, TritonAttnBackend):
        if not hasattr(cls, "get_cpu_graph_seq_len_fill_value"):
            cls.get_cpu_graph_seq_len_fill_value = lambda self: 1
            applied.append(f"{cls.__name__}.get_cpu_graph_seq_len_fill_value")
    if "sglang.srt.managers.scheduler" not in sys.modules:
        return applied  # the rest only matters where models run; its imports cost ~1 s elsewhere
    # Upstream symptom: DeepSeek-V3 (MLA) prefill on torch_native fails with "Expected size for
    # first two dimensions of batch2 tensor ..." (the MHA path vs the latent pool; sglang/mla.py).
    from sglang_dcp.sglang.mla import register_cpu_mla_handler

    if register_cpu_mla_handler():
        applied.append("deepseek AttentionBackendRegistry['torch_native'] (absorbed MLA)")
    # Upstream symptom: DeepSeek-V3's grouped top-k (layers/moe/topk.py, @torch.compile) builds
    # C++ per process and shape on CPU (seconds each), and DP ranks compiling the same kernel race
    # on SGLang's shared inductor cache: "InductorError: ImportError: ....main.so: file too
    # short". The routing functions run eagerly instead (same math).
    applied += _eager_moe_routing()
    applied += _cpu_event_in_pd_prefill()
    from sglang_dcp.sglang.pd_heads import pad_heads_to_attention_tp_in_pd

    applied += pad_heads_to_attention_tp_in_pd()
    from sglang_dcp.sglang.cpu_paged import use_torch_paged_allocator

    return applied + use_torch_paged_allocator()


class _CudaOnCpu(types.ModuleType):
    """``torch.cuda`` as ``sglang.srt.disaggregation.prefill`` sees it on CPU: ``Event`` is
    ``torch.cpu.Event``, everything else is ``torch.cuda``'s."""

    def __getattr__(self, name: str):
        import torch

        return torch.cpu.Event if name == "Event" else getattr(torch.cuda, name)


class _TorchForPdPrefill(types.ModuleType):
    """``torch`` for that one module (a copy of its names, so lookups stay plain attribute
    reads): its ``cuda`` attribute is ``_CudaOnCpu``."""

    def __getattr__(self, name: str):
        import torch

        return _CudaOnCpu("torch.cuda") if name == "cuda" else getattr(torch, name)


def _cpu_event_in_pd_prefill() -> list[str]:
    """Upstream symptom: a PD prefill server with overlap scheduling dies at the first request
    whose prompt hits its radix cache (often the second one): ``RuntimeError: Tried to
    instantiate dummy base class Event`` from ``torch.cuda.Event()`` in
    ``SchedulerDisaggregationPrefillMixin.maybe_send_cached_prefix_chunk``
    (disaggregation/prefill.py:1319; CPU torch has only a dummy class). The event orders the
    early prefix send after the prior forward's writes on ``forward_stream``; on CPU that forward
    has finished when the host gets there, and ``torch.cpu.Event`` records and waits on a CPU
    stream. Only that module's ``torch`` name is replaced."""
    import sglang.srt.disaggregation.prefill as prefill

    if isinstance(prefill.torch, _TorchForPdPrefill):
        return []
    import torch

    cuda = _CudaOnCpu("torch.cuda")
    cuda.__dict__.update({k: v for k, v in vars(torch.cuda).items() if not k.startswith("__")})
    cuda.Event = torch.cpu.Event
    proxy = _TorchForPdPrefill("torch")
    proxy.__dict__.update({k: v for k, v in vars(torch).items() if not k.startswith("__")})
    proxy.cuda = cuda
    prefill.torch = proxy
    return ["disaggregation.prefill torch.cuda.Event (CPU event)"]


def _eager_moe_routing() -> list[str]:
    import sglang.srt.layers.moe.topk as topk

    done = []
    for name, fn in list(vars(topk).items()):
        orig = getattr(fn, "_torchdynamo_orig_callable", None)
        if orig is not None:
            setattr(topk, name, orig)
            done.append(f"topk.{name} (eager)")
    return done


def install_pth(site_dir: str | None = None) -> str:
    """Write the .pth that installs the hooks at interpreter start; returns its path."""
    import os
    import sysconfig

    site_dir = site_dir or sysconfig.get_paths()["purelib"]
    path = os.path.join(site_dir, PTH_NAME)
    with open(path, "w") as f:
        f.write(PTH_LINE)
    return path

