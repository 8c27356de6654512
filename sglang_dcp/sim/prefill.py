"""The extra exchange of a prompt prefilled into shards (issue 18), added to its prefill time.

Pure Python. A prompt longer than one rank's KV cannot be prefilled on one rank; it is prefilled
in chunks of ``chunk`` tokens at its home, each chunk's KV leaving for the rank that will hold it
(``exchange/extend.py``, ``planner/prefill.py``). From the second shard on, every query row of a
chunk also goes to each rank already holding earlier tokens, which returns a partial (o, lse):
per layer, per row and per such rank, the bytes of one decode guest item (q out; o and the LSE
back). The simulator charges them with the profile's own exchange coefficients:

    extra_us = sum over chunks k with g_k > 0 of
               rows_k * g_k * exchange_us_per_item     (the rows' bytes, all layers)
             + exchange_us_fixed                        (the chunk's two all-to-alls, all layers)

``g_k``: ranks holding tokens before chunk ``k``'s start. The layout assumed at arrival (the
placement comes later) is the fewest ranks that hold the prompt, ``d = ceil(L / kv_capacity)``,
with equal shards of ``L / d`` tokens in token order, the home's last.

Provenance: ``exchange_us_per_item`` is the profile's cost of one guest item per decode step
summed over all layers (for the shipped GQA/MLA profiles: anchors 5.3 option A bytes over the
DeepEP effective rate, see each profile's ``provenance.arithmetic``); a chunk row carries the same
bytes per layer (a query row out, a partial (o, lse) back). ``exchange_us_fixed`` is the
profile's two extra all-to-alls per layer. The default chunk, 8192 tokens, is SGLang 0.5.21's
``chunked_prefill_size`` on 90-160 GB GPUs (H100/H200; ``srt/arg_groups/memory_hook.py``).

Not charged: the shards' attention over the rows (part of the prefill FLOPs the profile's
``prefill_us`` already counts, spread over ranks instead of one), the KV of each chunk moving to
its rank (the home-prefill path moves the same bytes after prefill), and any overlap of the
exchange with compute (charged in series: an upper bound). Prompts that fit one rank prefill at
home, unchanged: their prefill time is the profile's ``prefill_us`` alone.
"""

from __future__ import annotations

from sglang_dcp.planner.profile import CostProfile

DEFAULT_CHUNK = 8192


def shard_prefill_exchange_us(
    profile: CostProfile, prompt_len: int, *, kv_capacity: int, chunk: int = DEFAULT_CHUNK
) -> float:
    """Extra prefill time (µs) of a ``prompt_len``-token prompt on ranks of ``kv_capacity``
    KV tokens; 0 when it fits one rank."""
    if chunk < 1 or kv_capacity < 1:
        raise ValueError(f"chunk and kv_capacity must be >= 1, got {chunk} and {kv_capacity}")
    L = int(prompt_len)
    if L <= kv_capacity:
        return 0.0
    d = -(-L // kv_capacity)
    shard = L / d
    rows_x_ranks, chunks = 0, 0
    for start in range(0, L, chunk):
        g = min(d - 1, int(-(-start // shard)))  # ranks holding tokens before ``start``
        if g:
            rows_x_ranks += min(chunk, L - start) * g
            chunks += 1
    return rows_x_ranks * profile.exchange_us_per_item + chunks * profile.exchange_us_fixed
