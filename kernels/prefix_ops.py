"""``prefix_attention``: checks, tiling and launch of ``prefix_kernels._prefix_attn_kernel``.

A tile is ``[q_start, q_rows, kv_start, kv_len, kv_seen0]`` (int32): query rows
``q[q_start : q_start + q_rows]`` attend to the slots ``kv_indices[kv_start : kv_start + kv_len]``,
row ``r`` of the tile to the first ``min(kv_len, kv_seen0 + r)`` of them. ``kv_seen0 = kv_len``
is non-causal (a guest tile over a shard); a chunk's home tile over ``P`` prefix tokens followed by
the chunk's own is causal with ``kv_seen0 = P + 1`` (``P + s + 1`` for a tile starting at chunk
row ``s``). Tiles may share KV spans (every tile of a request on a shard rank reads the same
slots), so ``kv_indices`` holds each span once. A tile of one row is a decode item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .checks import INDEX_DTYPES, _fail, check_attention_inputs
from .merge_kernels import LOG2E
from .dispatch import _use_triton, kernels_interpreted
from .prefix_kernels import TILE_FIELDS, _prefix_attn_kernel
from .reference import prefix_attention_ref

_ROWS_X_HEADS = 64  # (rows x query heads) per program: the M side of the two dots


@dataclass(frozen=True)
class PrefixConfig:
    """Compile-time tiling of the prefix kernel for one (q, k, v) geometry."""

    group: int
    block_r: int
    block_h: int
    block_d: int
    block_dpe: int
    block_dv: int
    block_n: int
    v_from_k: bool
    dot_fp32: bool
    num_warps: int
    num_stages: int

    @property
    def head_tiles_per_kv(self) -> int:
        return triton.cdiv(self.group, self.block_h)


def prefix_config(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor) -> PrefixConfig:
    num_heads, head_dim = q.shape[1], q.shape[2]
    head_dim_v = v_buffer.shape[2]
    group = num_heads // k_buffer.shape[1]
    # the GQA group (MLA: every head) shares each K/V tile; rows fill the rest of the M side
    block_h = min(triton.next_power_of_2(group), 16)
    block_r = max(1, _ROWS_X_HEADS // block_h)
    block_d = 16 if head_dim < 16 else 1 << (head_dim.bit_length() - 1)
    rest = head_dim - block_d
    block_dpe = 0 if rest <= 0 else max(16, triton.next_power_of_2(rest))
    block_dv = max(16, triton.next_power_of_2(head_dim_v))
    v_from_k = (
        v_buffer.data_ptr() == k_buffer.data_ptr()
        and v_buffer.stride() == k_buffer.stride()
        and v_buffer.dtype == k_buffer.dtype
        and head_dim_v == block_d
    )
    wide = block_d >= 256
    dot_fp32 = q.dtype == torch.float32 or (kernels_interpreted() and q.dtype == torch.bfloat16)
    return PrefixConfig(
        group=group, block_r=block_r, block_h=block_h, block_d=block_d, block_dpe=block_dpe,
        block_dv=block_dv, block_n=32 if wide else 64, v_from_k=v_from_k, dot_fp32=dot_fp32,
        num_warps=8 if wide else 4, num_stages=1 if wide else 2,
    )  # fmt: skip


def check_prefix_inputs(q, k_buffer, v_buffer, tiles, kv_indices, sm_scale, *, max_rows, k_scale,
                        v_scale, out, validate) -> None:  # fmt: skip
    """Raise ``ValueError`` naming the first bad argument of ``prefix_attention``."""
    check_attention_inputs(q, k_buffer, v_buffer, sm_scale, k_scale=k_scale, v_scale=v_scale,
                           indices={"tiles": (tiles, 2, (torch.int32,)),
                                    "kv_indices": (kv_indices, 1, INDEX_DTYPES)})  # fmt: skip
    dev = q.device
    num_rows, num_heads = q.shape[0], q.shape[1]
    num_slots = k_buffer.shape[0]
    if tiles.shape[1] != TILE_FIELDS or (tiles.numel() and not tiles.is_contiguous()):
        _fail("tiles", f"expected a contiguous [num_tiles, {TILE_FIELDS}], got {list(tiles.shape)}")
    if not isinstance(max_rows, int) or max_rows < 0:
        _fail("max_rows", f"expected an int >= 0, got {max_rows!r}")
    if out is not None:
        o, lse = out
        want = (num_rows, num_heads, v_buffer.shape[2])
        if tuple(o.shape) != want or o.dtype != q.dtype or o.device != dev or o.stride(-1) != 1:
            _fail("out", f"o must be a {list(want)} {q.dtype} tensor on {dev}")
        if tuple(lse.shape) != want[:2] or lse.dtype != torch.float32 or lse.device != dev:
            _fail("out", f"lse must be a {list(want[:2])} float32 tensor on {dev}")
    if validate is None:
        validate = dev.type == "cpu"
    if validate and tiles.numel():
        t = tiles.detach().to("cpu", torch.int64)
        if bool((t < 0).any()):
            _fail("tiles", "fields must be >= 0")
        if int(t[:, 1].max()) > max_rows:
            _fail("tiles", f"a tile has {int(t[:, 1].max())} rows > max_rows {max_rows}")
        if int((t[:, 0] + t[:, 1]).max()) > num_rows:
            _fail("tiles", f"rows past q's {num_rows}")
        if int((t[:, 2] + t[:, 3]).max()) > kv_indices.numel():
            _fail("tiles", f"a KV span ends past kv_indices ({kv_indices.numel()})")
        for a, n in t[:, 2:4].tolist():
            used = kv_indices[a : a + n]
            if n and (int(used.min()) < 0 or int(used.max()) >= num_slots):
                _fail("kv_indices", f"a slot is out of range [0, {num_slots})")


def _scales(sm_scale: float, k_scale, v_scale):
    """(qk scale in base 2, K_SCALE ptr, v multiplier, V_SCALE ptr): float scales are folded
    into the launch's scalars, tensor scales are read by the kernel (no tensor made per call)."""
    qk, k_ptr, v_mul, v_ptr = float(sm_scale) * LOG2E, None, 1.0, None
    if isinstance(k_scale, torch.Tensor):
        k_ptr = k_scale.reshape(1).to(torch.float32)
    elif k_scale is not None:
        qk *= float(k_scale)
    if isinstance(v_scale, torch.Tensor):
        v_ptr = v_scale.reshape(1).to(torch.float32)
    elif v_scale is not None:
        v_mul = float(v_scale)
    return qk, k_ptr, v_mul, v_ptr


def prefix_launch_args(q, k_buffer, v_buffer, tiles, kv_indices, sm_scale, *, max_rows, k_scale,
                       v_scale, o, lse):  # fmt: skip
    """(grid, positional args, constexprs + launch options) of the launch."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads, head_dim_v = k_buffer.shape[1], v_buffer.shape[2]
    cfg = prefix_config(q, k_buffer, v_buffer)
    qk, k_ptr, v_mul, v_ptr = _scales(sm_scale, k_scale, v_scale)
    grid = (tiles.shape[0], triton.cdiv(max_rows, cfg.block_r),
            num_kv_heads * cfg.head_tiles_per_kv)  # fmt: skip
    args = (
        q, k_buffer, v_buffer, tiles, kv_indices, k_ptr, v_ptr, o, lse, qk, v_mul,
        *q.stride()[:2], *k_buffer.stride()[:2], *v_buffer.stride()[:2], *o.stride()[:2],
        *lse.stride(),
    )  # fmt: skip
    meta = dict(
        GROUP=cfg.group, HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_R=cfg.block_r,
        BLOCK_H=cfg.block_h, BLOCK_D=cfg.block_d, BLOCK_DPE=cfg.block_dpe, BLOCK_DV=cfg.block_dv,
        BLOCK_N=cfg.block_n, V_FROM_K=cfg.v_from_k, DOT_FP32=cfg.dot_fp32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    del num_heads
    return grid, args, meta


def prefix_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    tiles: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    *,
    max_rows: int,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    impl: str = "auto",
    validate: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of row tiles over KV spans given by slot ids, with LSE out.

    Args:
        q: [num_rows, num_heads, head_dim] fp16/bf16/fp32.
        k_buffer: [num_slots, num_kv_heads, head_dim], q.dtype or fp8 e4m3 (``k * k_scale``).
        v_buffer: [num_slots, num_kv_heads, head_dim_v], k_buffer.dtype; may view k_buffer (MLA,
            absorbed: one latent head, head_dim 576, V = its first 512 columns).
        tiles: [num_tiles, 5] int32 ``(q_start, q_rows, kv_start, kv_len, kv_seen0)`` (module
            docstring); on q's device.
        kv_indices: [nnz] int32/int64 slot ids of the spans.
        sm_scale: softmax scale applied to q.k.
        max_rows: an upper bound on ``q_rows`` of every tile (the grid's row-block axis; a host
            int, so nothing is read back).
        k_scale, v_scale: per-tensor FP8 scales: a python float (folded into the launch) or a
            1-element fp32 tensor on q's device.
        out: preallocated ``(o, lse)`` to write into (reused buffers); rows outside every tile
            are left as they are. ``None``: fresh tensors (rows outside every tile undefined).
        impl, validate: as for ``decode_attention``.

    Returns:
        o: [num_rows, num_heads, head_dim_v] q.dtype; lse: [num_rows, num_heads] fp32, natural
        log. A row that sees no KV gives o = 0, lse = -inf.
    """
    check_prefix_inputs(q, k_buffer, v_buffer, tiles, kv_indices, sm_scale, max_rows=max_rows,
                        k_scale=k_scale, v_scale=v_scale, out=out, validate=validate)  # fmt: skip
    if out is None:
        num_rows, num_heads = q.shape[:2]
        o = torch.empty(num_rows, num_heads, v_buffer.shape[2], dtype=q.dtype, device=q.device)
        lse = torch.empty(num_rows, num_heads, dtype=torch.float32, device=q.device)
    else:
        o, lse = out
    if not _use_triton(impl, q.device):
        return prefix_attention_ref(q, k_buffer, v_buffer, tiles, kv_indices, sm_scale,
                                    k_scale=k_scale, v_scale=v_scale, out=(o, lse))  # fmt: skip
    if tiles.shape[0] == 0 or max_rows == 0 or q.shape[0] == 0:
        return o, lse
    grid, args, meta = prefix_launch_args(
        q, k_buffer, v_buffer, tiles, kv_indices, sm_scale, max_rows=max_rows, k_scale=k_scale,
        v_scale=v_scale, o=o, lse=lse,
    )  # fmt: skip
    _prefix_attn_kernel[grid](*args, **meta)
    return o, lse
