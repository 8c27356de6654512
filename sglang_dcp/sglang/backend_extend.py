"""``DcpAttnBackend``'s extend side (prefill into shards, issue 25): the tile exchange's buffers,
reserved once; each EXTEND forward's row map and the inner backend's view; the extend branch of
``forward``.

For the rows of a split request's prefill chunk (``step.tiles``, ``exchange.extend_tiles``):

- the inner backend still stores the chunk's K/V and computes the batch's other rows, but sees
  the split requests with their prefix hidden (``extend_prefix_lens = 0``, ``seq_lens`` = the
  chunk), so it never reads their earlier (moved) KV: SGLang's triton backend attends over the
  chunk alone, ``torch_native`` over as many slots as the chunk has. Its output for those rows
  is discarded;
- the home's own part (its prefix tokens, then the chunk, causal) and the shard ranks' parts run
  as row tiles through ``kernels.prefix_attention`` and are merged by LSE
  (``exchange.tile_exchange``); the merged rows replace the inner's.

The row map comes from host data SGLang already has for an extend batch (``rids`` /
``req_pool_indices_cpu``, ``extend_seq_lens_cpu``) and the step plan; one copy to the device,
no read back.
"""

from __future__ import annotations

import copy
import logging

import torch

from sglang_dcp import env
from sglang_dcp.sglang import shipping

logger = logging.getLogger(__name__)


def chunk_size_per_rank() -> int:
    """SGLang's per-rank chunked-prefill budget (0: chunked prefill off)."""
    try:
        from sglang.srt.runtime_context import get_schedule

        size = get_schedule().chunked_prefill_size
    except Exception:  # noqa: BLE001 - outside a scheduler (tests, harnesses)
        return 0
    return int(size) if size and size > 0 else 0


class ExtendCalls:
    """Mixed into ``backend.DcpAttnBackend`` (its ``_runner``, sizes, ``exchange``)."""

    tiles_ex = None  # exchange.tile_exchange.TileExchange, reserved once
    _x_stage = None  # (pinned host [2, n] int64, device [2, n]): row map + split mask

    # -- buffers ------------------------------------------------------------------------------
    def reserve_tiles(self, rows: int = 0):
        """The tile exchange, sized by the per-rank chunk size (at start) or, when a step
        brings more rows than reserved, replaced once by a set that fits (logged)."""
        from sglang_dcp.exchange.extend_tiles import DEFAULT_TILE_ROWS
        from sglang_dcp.exchange.tile_exchange import (
            ROUND_ROWS, WIRE_BYTES, TileExchange, TileShape,
        )

        have = self.tiles_ex
        want = max(rows, chunk_size_per_rank())
        if want == 0:  # chunked prefill off: no prefill step has chunks over shards
            return None
        if have is not None and have.shape.max_rows >= want:
            return have
        if have is not None:
            logger.warning("sglang_dcp: a prefill step has %d chunk rows > the %d reserved; "
                           "reserving again", rows, have.shape.max_rows)  # fmt: skip
        pool = self._runner.token_to_kv_pool
        shape = TileShape(
            num_ranks=self.num_ranks, max_rows=want, capacity=min(want, ROUND_ROWS),
            num_q_heads=self.num_q_heads, head_dim=self.head_dim, v_head_dim=self.v_head_dim,
            max_kv_slots=1, tile_rows=DEFAULT_TILE_ROWS, dtype=self.dtype,
        )  # fmt: skip
        # wide rows (MLA: 128 heads x 576) get fewer rows per round: the four wire buffers stay
        # under WIRE_BYTES, at the price of more rounds for a long chunk
        per_row = max(1, (shape.nbytes_wire() // shape.capacity))
        shape = TileShape(
            num_ranks=self.num_ranks, max_rows=want,
            capacity=max(1, min(shape.capacity, WIRE_BYTES // per_row)),
            num_q_heads=self.num_q_heads, head_dim=self.head_dim, v_head_dim=self.v_head_dim,
            max_kv_slots=pool.size + pool.page_size + 1, tile_rows=DEFAULT_TILE_ROWS,
            dtype=self.dtype,
        )  # fmt: skip
        self.tiles_ex = None  # drop the old set before allocating the new one
        self.tiles_ex = TileExchange(shape, self.device)
        pin = self.device.type == "cuda"
        self._x_stage = (torch.zeros(2, want, dtype=torch.long, pin_memory=pin),
                         torch.zeros(2, want, dtype=torch.long, device=self.device))  # fmt: skip
        logger.info("sglang_dcp: prefill-into-shards buffers: %.1f MiB (%d chunk rows, %d per "
                    "peer per round)", shape.nbytes() / 2**20, want, shape.capacity)  # fmt: skip
        return self.tiles_ex

    def load_tiles(self, step) -> None:
        ex = self.reserve_tiles(max(step.tiles.num_rows, step.tiles.max_stream))
        home, guests = step.tile_slots
        ex.load(step.tiles, home_slots=home, guest_slots=guests)
        from sglang_dcp.sglang.context import stats

        s = stats()
        reads = step.tiles.kv_reads()
        s.prefill_kv_reads_tiles += reads["tiles"]
        s.prefill_kv_reads_ideal += reads["ideal"]
        s.prefill_kv_reads_per_row += reads["per_row"]

    # -- metadata: the row map and the inner's view -------------------------------------------
    def prepare_extend(self, fb, step):
        """Row map of ``fb``'s chunk rows (``extend_rows_of``) and the view of ``fb`` the inner
        backend gets (split requests' prefix hidden); returns that view."""
        ex = self.reserve_tiles(max(step.tiles.num_rows, step.tiles.max_stream))
        N = ex.shape.max_rows
        lens = [int(n) for n in fb.extend_seq_lens_cpu]
        starts = [int(n) for n in fb.extend_prefix_lens_cpu]
        got = _chunks_of(fb, step)
        if all(h is None for h in got):  # no chunk homed here: SGLang's attention alone
            return fb
        n_tok, bs = sum(lens), len(lens)
        if max(n_tok, bs) > self._x_stage[0].shape[1]:
            self.reserve_tiles(max(n_tok, bs))
        host, dev = self._x_stage
        x, split = host[0, :n_tok], host[1, :bs]
        x.fill_(N)
        split.zero_()
        off = 0
        for i, (n, start, hit) in enumerate(zip(lens, starts, got)):
            if hit is not None:
                first, want_start, num = hit
                if (start, n) != (want_start, num):
                    raise RuntimeError(
                        f"sglang_dcp: the step header's chunk of batch row {i} is [{want_start}, "
                        f"{want_start + num}), the batch runs [{start}, {start + n})"
                    )
                torch.arange(first, first + n, out=x[off : off + n])
                split[i] = 1
            off += n
        dev[:, : max(n_tok, bs)].copy_(host[:, : max(n_tok, bs)], non_blocking=True)
        self._extend_x = (fb, dev[0, :n_tok])
        mask = dev[1, :bs].bool()
        view = copy.copy(fb)
        view.extend_prefix_lens = torch.where(mask, 0, fb.extend_prefix_lens)
        view.seq_lens = torch.where(mask, fb.extend_seq_lens.to(fb.seq_lens.dtype), fb.seq_lens)
        view.extend_prefix_lens_cpu = [0 if h is not None else s for s, h in zip(starts, got)]
        seq_cpu = getattr(fb, "seq_lens_cpu", None)
        if seq_cpu is not None:
            view.seq_lens_cpu = seq_cpu.clone()
            for i, h in enumerate(got):
                if h is not None:
                    view.seq_lens_cpu[i] = lens[i]
        if getattr(fb, "seq_lens_sum", None) is not None:
            view.seq_lens_sum = fb.seq_lens_sum - sum(s for s, h in zip(starts, got) if h)
        self._inner_fb = (fb, view)
        return view

    def extend_rows_of(self, fb):
        """``[num_tokens]`` tile-exchange home row of each query row of an EXTEND ``fb``
        (``max_rows``: not a chunk row; ``None``: no chunk of a split request here)."""
        held = self._extend_x
        return held[1] if held is not None and held[0] is fb else None

    # -- the exchange and forward ---------------------------------------------------------------
    def run_tiles(self, layer_id: int, rows, k_buf, v_buf, scales) -> torch.Tensor:
        """This layer's tile exchange (every rank, after the decode exchange); ``rows``:
        ``(q [n, H, D], x [n])`` of the chunk rows homed here, or ``None``."""
        from sglang_dcp.kernels import prefix_attention

        ex = self.tiles_ex
        if rows is not None:
            ex.scatter_rows(*rows)
        from sglang_dcp.sglang.context import step_comm

        return ex.run(step_comm(), k_buf, v_buf, sm_scale=self.layer_scaling(layer_id),
                      attention=prefix_attention, **scales)  # fmt: skip

    def forward_extend(self, cur, q, layer, fb, out):  # cur: backend_meta.LayerCursor
        """The extend branch of ``forward``: ``out`` is the inner's ``[n, H * Dv]``; the chunk
        rows of split requests are replaced by the tile exchange's merged rows."""
        x = self.extend_rows_of(fb)
        if x is None:
            self.exchange(cur, layer.layer_id, None, None)
            return out
        n = q.reshape(-1, layer.tp_q_head_num * layer.qk_head_dim).shape[0]
        N = self.tiles_ex.shape.max_rows
        if x.shape[0] < n:  # DP-attention padding rows never map
            x = torch.cat([x, x.new_full((n - x.shape[0],), N)])
        q3 = q.reshape(n, layer.tp_q_head_num, layer.qk_head_dim)
        self.exchange(cur, layer.layer_id, None, None, tile_rows=(q3, x))
        rows = self.tiles_ex.gather_rows(out.reshape(n, -1), x)
        if env.poison_moved():
            from types import SimpleNamespace

            step = cur.step
            names = [f"{c.rid}@{c.start + i}" for c in step.tiles.home for i in range(c.rows)]
            shipping.check_rows(SimpleNamespace(tag=step.tag, row_rids=names), layer.layer_id,
                                rows, x, N)  # fmt: skip
        return rows.view_as(out)


def _chunks_of(fb, step) -> list:
    """Per batch request: its chunk's ``(first home row, start, rows)`` or ``None``, from host
    data (``rids``, else ``req_pool_indices_cpu``; a device read only where SGLang gave neither)."""
    rids = getattr(fb, "rids", None)
    if rids is not None and len(rids) == len(fb.extend_seq_lens_cpu):
        return [step.extend_rids.get(r) for r in rids]
    keys = getattr(fb, "req_pool_indices_cpu", None)
    if keys is None:
        keys = fb.req_pool_indices.cpu()  # not hit by SGLang 0.5.21's extend batches
    return [step.extend_rows.get(int(k)) for k in keys.tolist()]
