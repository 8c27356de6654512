"""The shard-move staging buffers of this scheduler, reserved inside SGLang's memory budget.

SGLang sizes its KV pool from the device memory free when it profiles
(``KVCacheConfigurator._profile_available_bytes``: free memory minus ``pre_model_load_memory *
(1 - mem_fraction_static)``), so whatever is resident then is charged to the static budget, like
the weights. The hook ``around_profile_kv`` allocates the two staging buffers of
``exchange.move_staging.MoveStaging`` (``--dcp-transfer-chunk-mb`` each) on the device just
before that, and logs how much it took; the KV pool is smaller by exactly that (on CPU, right
after it: see the hook). ``ship`` uses
them for every move of the rank's life: no transfer allocates a buffer of its own size.
"""

from __future__ import annotations

import logging

import torch

from sglang_dcp.exchange.move_staging import MoveStaging

logger = logging.getLogger(__name__)

def reserve(device: torch.device | str, chunk_mb: int) -> MoveStaging:
    """Allocate this process's staging buffers (once, kept in its ``RankContext``; later calls
    return the same)."""
    from sglang_dcp.sglang.context import ctx

    c = ctx()
    if c.move_staging is None:
        got = c.move_staging = MoveStaging(chunk_mb << 20, device)
        logger.info(
            "sglang_dcp: reserved %.1f MiB on %s for shard-move staging (2 x %d MiB chunks)%s",
            got.reserved_bytes / 2**20, got.device, chunk_mb,
            "" if got.device.type == "cpu"
            else ", before SGLang sizes its KV pool (inside --mem-fraction-static)",
        )  # fmt: skip
    return c.move_staging


def staging() -> MoveStaging:
    """The reserved buffers; a process that moves KV without them is a wiring fault."""
    from sglang_dcp.sglang.context import ctx

    got = ctx().move_staging
    if got is None:
        raise RuntimeError(
            "sglang_dcp: shard-move staging was not reserved (the KV-profiling hook "
            "move_reserve.around_profile_kv did not run)"
        )
    return got


def around_profile_kv(original, self, pre_model_load_memory, *args, **kwargs):
    """``KVCacheConfigurator._profile_available_bytes`` (AROUND): on a GPU, reserve on its
    device first, so SGLang's KV budget is measured with the staging resident. On CPU the
    "device" is the host's RAM, which SGLang measures machine-wide (every rank, every process):
    there the staging is allocated right after the measurement, still once and for life, but
    not charged to a budget that does not describe this rank (4 CPU ranks reserving first
    pushed the demo's ``--mem-fraction-static 0.05`` under its minimum)."""
    from sglang_dcp.sglang.options import DcpOptions

    chunk_mb = DcpOptions.from_env().transfer_chunk_mb
    if torch.device(self.device).type == "cpu":
        out = original(self, pre_model_load_memory, *args, **kwargs)
        reserve(self.device, chunk_mb)
        return out
    reserve(self.device, chunk_mb)
    return original(self, pre_model_load_memory, *args, **kwargs)
