"""LSE base conversion. The project keeps natural-log LSE; FlashInfer's kernels use base 2."""

from __future__ import annotations

import math

import torch

_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)


def lse_natural_to_base2(lse: torch.Tensor) -> torch.Tensor:
    """[num_items, num_heads] natural-log LSE -> base-2 (``log2 sum 2^x``) LSE; -inf stays -inf."""
    return lse * _LOG2E


def lse_base2_to_natural(lse2: torch.Tensor) -> torch.Tensor:
    """[num_items, num_heads] base-2 LSE (FlashInfer) -> natural-log LSE; -inf stays -inf."""
    return lse2 * _LN2
