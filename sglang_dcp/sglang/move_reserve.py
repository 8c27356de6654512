"""The shard-move staging buffers of this scheduler, reserved inside SGLang's memory budget.

SGLang sizes its KV pool from the device memory free when it profiles
(``KVCacheConfigurator._profile_available_bytes``: free memory minus ``pre_model_load_memory *
(1 - mem_fraction_static)``), so whatever is resident then is charged to the static budget, like
the weights. The hook ``before_profile_kv`` allocates the two staging buffers of
``exchange.move_staging.MoveStaging`` (``--dcp-transfer-chunk-mb`` each) on the device just
before that, and logs how much it took; the KV pool is smaller by exactly that. ``ship`` uses
them for every move of the rank's life: no transfer allocates a buffer of its own size.
"""

from __future__ import annotations

import logging

import torch

from sglang_dcp.exchange.move_staging import MoveStaging

logger = logging.getLogger(__name__)

_STAGING: MoveStaging | None = None


def reserve(device: torch.device | str, chunk_mb: int) -> MoveStaging:
    """Allocate this process's staging buffers (once; later calls return the same)."""
    global _STAGING
    if _STAGING is None:
        _STAGING = MoveStaging(chunk_mb << 20, device)
        logger.info(
            "sglang_dcp: reserved %.1f MiB on %s for shard-move staging (2 x %d MiB chunks), "
            "before SGLang sizes its KV pool (inside --mem-fraction-static)",
            _STAGING.reserved_bytes / 2**20, _STAGING.device, chunk_mb,
        )  # fmt: skip
    return _STAGING


def staging() -> MoveStaging:
    """The reserved buffers; a process that moves KV without them is a wiring fault."""
    if _STAGING is None:
        raise RuntimeError(
            "sglang_dcp: shard-move staging was not reserved (the KV-profiling hook "
            "move_reserve.before_profile_kv did not run)"
        )
    return _STAGING


def before_profile_kv(self, pre_model_load_memory, *args, **kwargs) -> None:
    """``KVCacheConfigurator._profile_available_bytes`` (BEFORE): reserve on its device."""
    from sglang_dcp.sglang.options import DcpOptions

    reserve(self.device, DcpOptions.from_env().transfer_chunk_mb)
