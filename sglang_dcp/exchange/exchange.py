"""One layer's attention across ranks: route queries out, attend, route partials back, merge.

Every op here reads and writes the static ``ExchangeBuffers`` with fixed shapes and no host
synchronisation, so the same code runs eagerly on CPU and inside a captured CUDA graph::

    q_in --gather(send_index)--> q_send --all_to_all--> q_recv
    [q_in | q_recv rows] = q_items --decode_attention(kv_indptr, kv_indices)--> (o, lse) per item
    guest (o, lse) --> r_send --all_to_all--> r_recv
    [local (o, lse) | r_recv rows] --gather(merge_index)--> merge(seg_indptr) --> out, out_lse

``peers``: a node-scoped step (``wire.scope_peers``) runs both all-to-alls among this rank's
node only (``Communicator.all_to_all_peers``); the chunks of other ranks are neither sent nor
written, and no route of such a step has an item there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from sglang_dcp.exchange.buffers import ExchangeBuffers
from sglang_dcp.exchange.comm import Communicator

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
MergeFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def default_kernels(impl: str = "auto") -> tuple[AttentionFn, MergeFn]:
    """(decode_attention, merge_attention_states) of ``sglang_dcp.kernels`` bound to ``impl``:
    ``auto`` (Triton on CUDA, and on CPU only under ``TRITON_INTERPRET=1``; else the torch
    reference), ``torch`` or ``triton``."""
    from sglang_dcp import kernels

    if impl not in kernels.IMPLS:
        raise ValueError(f"impl must be one of {kernels.IMPLS}, got {impl!r}")
    return (
        functools.partial(kernels.decode_attention, impl=impl),
        functools.partial(kernels.merge_attention_states, impl=impl),
    )


def _all_to_all(comm: Communicator, out: torch.Tensor, inp: torch.Tensor, peers) -> None:
    if peers is None:
        comm.all_to_all_single(out, inp)
    else:
        comm.all_to_all_peers(out, inp, peers)


def send_queries(bufs: ExchangeBuffers, comm: Communicator, peers=None) -> None:
    """Pack each peer's queries (``send_index``) and all-to-all them; fill ``q_items``."""
    s = bufs.shape
    W, C, B, H = s.num_ranks, s.capacity, s.max_local, s.num_q_heads
    bufs.q_send_rows.copy_(bufs.q_in.index_select(0, bufs.send_index).view(W, C, H, s.head_dim))
    _all_to_all(comm, bufs.q_recv, bufs.q_send, peers)
    bufs.q_items[:B].copy_(bufs.q_in)
    bufs.q_items[B:].copy_(bufs.q_recv_rows.reshape(W * C, H, s.head_dim))


def attend_items(
    bufs: ExchangeBuffers,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    *,
    sm_scale: float,
    attention: AttentionFn,
    num_kv_splits: int | None = None,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch over local and guest items: (o [num_items, H, Dv], lse [num_items, H] fp32).
    ``k_scale``/``v_scale``: per-tensor scales of an FP8 (e4m3) KV cache, ``None`` otherwise."""
    kw = {} if num_kv_splits is None else {"num_kv_splits": num_kv_splits}
    if k_scale is not None or v_scale is not None:
        kw.update(k_scale=k_scale, v_scale=v_scale)
    return attention(
        bufs.q_items, k_buffer, v_buffer, bufs.kv_indptr, bufs.kv_indices, sm_scale, **kw
    )


def send_outputs(
    bufs: ExchangeBuffers, comm: Communicator, o: torch.Tensor, lse: torch.Tensor, peers=None
) -> None:
    """Return the guest items' partials to their homes."""
    s = bufs.shape
    W, C, B, H = s.num_ranks, s.capacity, s.max_local, s.num_q_heads
    bufs.r_send_o.copy_(o[B:].view(W, C, H, s.v_head_dim))
    bufs.r_send_lse.copy_(lse[B:].view(W, C, H))
    _all_to_all(comm, bufs.r_recv, bufs.r_send, peers)


def merge_outputs(
    bufs: ExchangeBuffers, o: torch.Tensor, lse: torch.Tensor, merge: MergeFn
) -> None:
    """Merge each home row's parts (local + returned) in shard order into ``out``/``out_lse``."""
    s = bufs.shape
    W, C, B, H = s.num_ranks, s.capacity, s.max_local, s.num_q_heads
    parts_o = torch.cat([o[:B], bufs.r_recv_o.reshape(W * C, H, s.v_head_dim)])
    parts_lse = torch.cat([lse[:B], bufs.r_recv_lse.reshape(W * C, H)])
    mo, mlse = merge(
        parts_o.index_select(0, bufs.merge_index),
        parts_lse.index_select(0, bufs.merge_index),
        bufs.seg_indptr,
    )
    bufs.out.copy_(mo[:B])
    bufs.out_lse.copy_(mlse[:B])


def exchange_attention(
    bufs: ExchangeBuffers,
    comm: Communicator,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    *,
    sm_scale: float,
    attention: AttentionFn,
    merge: MergeFn,
    num_kv_splits: int | None = None,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
    peers: tuple[int, ...] | None = None,
) -> None:
    """Attention of ``bufs.q_in`` over KV spread across ranks into ``bufs.out``/``bufs.out_lse``.

    ``k_buffer: [num_slots, num_kv_heads, head_dim]``, ``v_buffer: [num_slots, num_kv_heads,
    v_head_dim]``: this rank's pool for the layer (FP8 e4m3 with ``k_scale``/``v_scale``, or the
    queries' dtype). Every rank calls this together; ``peers``: only this rank's node's ranks
    exchange (a node-scoped step; ``None``: every rank).
    """
    send_queries(bufs, comm, peers)
    o, lse = attend_items(
        bufs,
        k_buffer,
        v_buffer,
        sm_scale=sm_scale,
        attention=attention,
        num_kv_splits=num_kv_splits,
        k_scale=k_scale,
        v_scale=v_scale,
    )
    send_outputs(bufs, comm, o, lse, peers)
    merge_outputs(bufs, o, lse, merge)


def merge_rounds(
    outs: Sequence[tuple[torch.Tensor, torch.Tensor]], merge: MergeFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine per-round results ``(o [B, H, Dv], lse [B, H])`` of the same rows (a step that did
    not fit one round); the LSE merge is associative, so rounds merge like shards."""
    if len(outs) == 1:
        return outs[0]
    R = len(outs)
    B = outs[0][0].shape[0]
    o = torch.stack([x[0] for x in outs], dim=1).flatten(0, 1)  # [B * R, H, Dv], row-major
    lse = torch.stack([x[1] for x in outs], dim=1).flatten(0, 1)
    seg = torch.arange(0, (B + 1) * R, R, dtype=torch.long, device=o.device)
    return merge(o, lse, seg)
