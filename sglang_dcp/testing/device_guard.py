"""A device-strict mode for CPU tests: the faults a GPU would show, raised on a CPU.

On a CPU every tensor lives in one place, so a CPU test cannot see a host tensor handed to a
device pool (``torch.cat`` of a CUDA ``free_pages`` with CPU slots fails only on a GPU) nor a
per-step host sync (``.cpu()``, ``.item()``, ``.tolist()`` of a CUDA tensor waits for the
stream). ``DeviceGuard`` gives tensors a second, virtual place:

- **on the device**: tensors made by a factory call with an explicit ``device=`` (SGLang's pools
  and allocators, and our code that follows ``pool.device``), moved with ``.to(device)``
  /``.to(device=...)``, marked with ``mark``, or computed from any such tensor;
- **on the host**: everything else (``torch.tensor(list)``, ``torch.zeros(n)``, pinned staging).

Inside the mode:

- an op whose inputs mix device tensors and host tensors with at least one dimension raises
  ``DeviceMixError`` (0-dim host tensors pass, as CPU scalars do with CUDA tensors; ``copy_``
  and ``.to`` are the legal crossings);
- ``.cpu()``, ``.item()``, ``.tolist()``, ``.numpy()``, ``bool()``, ``int()``, ``float()`` of a
  device tensor count as host syncs; past ``max_syncs`` they raise ``HostSyncError``
  (``max_syncs=0``: none allowed). ``syncs`` lists where each happened.

Collectives (``torch.distributed``) are not torch functions and pass untouched. The mode sees
Python-level torch calls only, which is where our glue and SGLang's allocators live.

    with DeviceGuard(max_syncs=2) as g:
        ship(...)
    assert len(g.syncs) <= 2
"""

from __future__ import annotations

import traceback
import weakref

import torch
from torch.overrides import TorchFunctionMode

_SYNCS = {
    torch.Tensor.cpu, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
}  # fmt: skip
# legal host <-> device crossings: an explicit copy, or ``.to`` (marks its result)
_CROSSINGS = {torch.Tensor.copy_, torch.Tensor.to}
_FACTORY_NAMES = {
    "zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "randn", "rand",
    "randint", "randperm", "zeros_like", "ones_like", "empty_like", "full_like", "eye",
    "linspace", "empty_strided",
}  # fmt: skip


class DeviceMixError(RuntimeError):
    """Host and device tensors met in one op (on a GPU: a device mismatch)."""


class HostSyncError(RuntimeError):
    """A device tensor was read on the host (on a GPU: a stream sync)."""


def _tensors(x, out: list) -> list:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _tensors(y, out)
    elif isinstance(x, dict):
        for y in x.values():
            _tensors(y, out)
    return out


class DeviceGuard(TorchFunctionMode):
    """See the module docstring. ``max_syncs``: host syncs allowed (``None``: count only)."""

    def __init__(self, *, max_syncs: int | None = 0) -> None:
        super().__init__()
        self.max_syncs = max_syncs
        self.syncs: list[str] = []
        self._on_device: dict[int, weakref.ref] = {}  # id -> the tensor (tensors compare by value)

    # -- marking ---------------------------------------------------------------------------------
    def mark(self, *tensors: torch.Tensor) -> None:
        """Treat these tensors (made outside the mode) as living on the device."""
        for t in tensors:
            self._add(t)

    def on_device(self, t: torch.Tensor) -> bool:
        ref = self._on_device.get(id(t))
        return ref is not None and ref() is t

    def _add(self, t: torch.Tensor) -> None:
        key = id(t)
        self._on_device[key] = weakref.ref(t, lambda _r, k=key, d=self._on_device: d.pop(k, None))

    # -- the mode --------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = _tensors(args, []) + _tensors(kwargs, [])
        dev = [t for t in ins if self.on_device(t)]
        if dev and func in _SYNCS:
            self._sync(func)
        if dev and func not in _CROSSINGS and func not in _SYNCS:
            host = [t for t in ins if not self.on_device(t) and t.dim() > 0]
            if host:
                raise DeviceMixError(
                    f"{getattr(func, '__name__', func)}: device tensors "
                    f"{[tuple(t.shape) for t in dev]} mixed with host tensors "
                    f"{[tuple(t.shape) for t in host]} (a device mismatch on a GPU)"
                )
        out = func(*args, **kwargs)
        if func is torch.Tensor.cpu and dev:
            return out.clone()  # a host copy, as on a GPU (on a CPU ``.cpu()`` returns itself)
        if func in _SYNCS:
            return out
        made_on_device = bool(dev) or (
            kwargs.get("device") is not None and getattr(func, "__name__", "") in _FACTORY_NAMES
        )
        if func is torch.Tensor.to and not dev:  # an upload: .to(dev) or .to(device=dev)
            made_on_device = kwargs.get("device") is not None or any(
                isinstance(a, (torch.device, str)) for a in args[1:]
            )
        if func is torch.Tensor.copy_ and not dev:
            made_on_device = False
        if made_on_device:
            for t in _tensors(out, []):
                self._add(t)
        return out

    def _sync(self, func) -> None:
        frames = [f for f in traceback.extract_stack()
                  if "device_guard" not in f.filename and "/torch/" not in f.filename]
        where = f"{func.__name__} at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        self.syncs.append(where)
        if self.max_syncs is not None and len(self.syncs) > self.max_syncs:
            raise HostSyncError(
                f"host sync #{len(self.syncs)} ({where}); {self.max_syncs} allowed: "
                f"{self.syncs[:-1]}"
            )
