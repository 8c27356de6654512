"""Which implementation an op runs: ``impl`` = ``"auto"`` (Triton on CUDA tensors, and on CPU
tensors when the kernels were decorated under ``TRITON_INTERPRET=1``; the torch reference
otherwise), ``"triton"`` or ``"torch"``."""

from __future__ import annotations

import torch

from .decode_kernels import _decode_split_kernel

IMPLS = ("auto", "triton", "torch")


def kernels_interpreted() -> bool:
    """True when the kernels were decorated under ``TRITON_INTERPRET=1`` (read at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_decode_split_kernel, InterpretedFunction)


def _use_triton(impl: str, device: torch.device) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    on_gpu = device.type == "cuda"
    if impl == "triton" and not on_gpu and not kernels_interpreted():
        raise ValueError(
            "impl: 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before sglang_dcp.kernels "
            "is imported; use impl='torch' or 'auto'"
        )
    return on_gpu or kernels_interpreted()
