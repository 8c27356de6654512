"""KV sharding under SGLang's overlap scheduling (``Scheduler.event_loop_overlap``, 0.5.21).

With overlap on, the scheduler plans step N+1, the step header included, while step N's forward
still runs on the forward stream, and processes step N's results only after launching N+1:

- **Plan-time state only.** Which split requests decode, and with how many KV tokens, comes
  from what SGLang's planning set (``step_build.decodes_now``, ``kv_len``), never from
  ``output_ids`` or ``finished()``, which lag one step.
- **Finishes arrive one step late.** A request finished at step N is still in batch N+1 (SGLang
  decodes it once more, as it does any request) and every rank runs its exchange; its release
  reaches the header at N+2 at the earliest, so its guests hold their slots through N+1.
- **KV work waits for the forward in flight.** A header that frees guest slots or moves shards
  first makes the scheduler's stream wait for the forward stream (``wait_for_forward``, on the
  device; the host goes on planning): no slot the running forward reads is freed and then
  written by a shard copy under it, and no shard is copied before the forward that wrote it
  (the prefill of step N, when N+1 is the first decode) has run. A step without such work waits
  for nothing, so overlap stays on for it. Forward writes need no wait: they run on the forward
  stream, in step order. A prefill chunk's pieces, shipped right after its forward was launched
  (``prefill_shards.after_forward``), wait the same way for the chunk's K/V store.

Every rank sees the same moves and releases (the gathered news), so every rank waits in the
same steps; ``header_forward_waits`` in ``/v1/loads``'s ``dcp`` section counts them.
"""

from __future__ import annotations

from sglang_dcp.sglang.context import stats


def wait_for_forward(model_runner) -> None:
    """Order the KV work of this header after the forward in flight (see above)."""
    stats().header_forward_waits += 1
    if str(model_runner.device).startswith("cpu"):
        return  # CPU forwards run to completion inside run_batch: nothing is in flight
    import torch

    device = torch.get_device_module(model_runner.device)
    device.current_stream().wait_stream(model_runner.forward_stream)
