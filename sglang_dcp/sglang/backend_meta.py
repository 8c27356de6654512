"""``DcpAttnBackend``'s side of SGLang's metadata calls: the static exchange, sized once, what
each forward's metadata call prepares (SGLang 0.5.21 ``base_attn_backend`` API), and the
per-layer constants the exchange needs (``sm_scale``, FP8 KV scales).

SGLang calls, per forward, ``init_forward_metadata(fb)`` (eager) or, around CUDA graphs,
``init_cuda_graph_state`` once, ``init_forward_metadata_out_graph(fb, in_capture)`` before each
capture and replay (eager host work) and ``init_forward_metadata_in_graph(fb)`` inside the
captured region. Here those calls load the step's route into the static exchange (once per step,
``load``) and give the inner backend a view of ``fb`` in which the rows of split requests have
sequence length 1 (the graph runner's seq-len fill value), so SGLang's own attention never reads
their moved KV; under graphs that view's ``seq_lens`` is a static tensor and the number of real
(unpadded) rows lives on the device for the captured row map.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from sglang_dcp.sglang import context
from sglang_dcp.sglang.context import stats

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LayerCursor:
    """Which layer's exchange one forward joins next: the backend's per-forward state, so the
    step (``DcpStep``, built by the header) is only read. ``step``: the step this forward runs
    (``None``: a graph capture, which has none)."""

    step: Any = None
    next_layer: int = 0
    done_layer: int = -1
    exchange_s: float = 0.0


class MetadataCalls:
    """Mixed into ``backend.DcpAttnBackend`` (its ``inner``, ``_runner``, sizes)."""

    # -- sizes ----------------------------------------------------------------------------------
    def ensure_exchange(self):
        """The static exchange, sized once: home rows ``min(max requests, (W - 1) * C)``, ``C``
        from ``--dcp-max-guest-items``, KV indices the whole pool."""
        if self.ex is None:
            from sglang_dcp.exchange.buffers import ExchangeShape
            from sglang_dcp.exchange.static import StaticExchange
            from sglang_dcp.sglang.options import DcpOptions

            r = self._runner
            cap = DcpOptions.from_env().max_guest_items
            reqs = r.req_to_token_pool.size + 1
            shape = ExchangeShape(
                num_ranks=self.num_ranks,
                max_local=max(1, min(reqs, (self.num_ranks - 1) * cap)),
                capacity=cap,
                num_q_heads=self.num_q_heads,
                head_dim=self.head_dim,
                v_head_dim=self.v_head_dim,
                max_kv_slots=r.token_to_kv_pool.size + r.token_to_kv_pool.page_size + 1,
                dtype=self.dtype,
            )
            self.ex = self.current_ex = StaticExchange(shape, self.device, num_row_keys=reqs)
            stats().exchange_capacity = cap
            logger.info(
                "sglang_dcp: exchange buffers %.1f MiB on %s (%d home rows, %d guest items per "
                "peer, buckets %s)", self.ex.nbytes / 2**20, self.device, shape.max_local, cap,
                sorted(self.ex.layouts),
            )  # fmt: skip
            self.layer_scaling(self.start_layer)  # per-layer constants, before any capture
        return self.ex

    def _capture_peers(self, variant: str | None) -> tuple[int, ...] | None:
        """The scope a captured variant runs: its rank's node for ``dcp<c>n``, else every rank."""
        from sglang_dcp.exchange.wire import node_ranks
        from sglang_dcp.sglang.graphs import node_scoped
        from sglang_dcp.sglang.options import DcpOptions

        if not node_scoped(variant):
            return None
        rpn = DcpOptions.from_env().ranks_per_node or self.num_ranks
        return node_ranks(context.step_comm().rank, self.num_ranks, rpn)

    def needs_eager(self, step) -> bool:
        """A step the static buffers cannot run in one round (rounds, too many split rows)."""
        return (step.rounds > 1 or step.extend_capacity > 0
                or step.num_rows > self.ensure_exchange().shape.max_local)  # fmt: skip

    # -- metadata: SGLang's eager and graph entry points ----------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        self.inner.init_cuda_graph_state(max_bs, max_num_tokens)
        self.ensure_exchange()
        self._inner_seq = torch.ones(max_bs, dtype=torch.int32, device=self.device)
        self._num_real = torch.zeros(1, dtype=torch.long, device=self.device)

    def init_forward_metadata(self, forward_batch):
        self.inner.init_forward_metadata(self._prepare(forward_batch))

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        self.inner.init_forward_metadata_out_graph(
            self._prepare(forward_batch, in_capture=in_capture), in_capture
        )

    def init_forward_metadata_in_graph(self, forward_batch):
        from sglang_dcp.sglang.graphs import bucket_of, capturing_variant

        self._capture = LayerCursor()  # each captured run starts at the first layer
        variant = capturing_variant()
        bucket, peers = bucket_of(variant), self._capture_peers(variant)
        if bucket is not None and (bucket, peers) != (self.current_ex.bucket,
                                                      self.current_ex.peers):  # fmt: skip
            raise RuntimeError(
                f"sglang_dcp: capturing the exchange at bucket {bucket} (peers {peers}), but its "
                f"metadata was loaded at bucket {self.current_ex.bucket} (peers "
                f"{self.current_ex.peers}): name the variant before "
                "init_forward_metadata_out_graph"
            )
        self.inner.init_forward_metadata_in_graph(forward_batch)

    def _prepare(self, fb, *, in_capture: bool = False):
        """Load the step's route (once per step), and the view of ``fb`` the inner backend
        gets: split rows at sequence length 1 (never reading their moved KV)."""
        self._inner_fb = None
        self._extend_x = None
        if in_capture:  # SGLang names the variant before this call (decode_cuda_graph_runner)
            from sglang_dcp.sglang.graphs import bucket_of, capturing_variant

            self.current_ex = self.ensure_exchange()
            variant = capturing_variant()
            self.current_ex.clear(bucket_of(variant), self._capture_peers(variant))
            self._capture = LayerCursor()
            return fb
        step = context.current_step()
        if step is None or not step.active:
            return fb
        ex = self.load(step)
        if step.tiles is not None and fb.forward_mode.is_extend():
            return self.prepare_extend(fb, step)  # backend_extend.py
        if not fb.forward_mode.is_decode_or_idle() or fb.req_pool_indices is None:
            return fb
        bs = fb.req_pool_indices.shape[0]
        split = ex.row_index(fb.req_pool_indices) < ex.shape.max_local
        view = copy.copy(fb)
        if self._num_real is not None:  # rows past it are graph-replay padding
            self._num_real.fill_(bs - int(getattr(fb, "num_padding", 0) or 0))
        seq = self._device_seq(bs)
        seq.copy_(fb.seq_lens)
        seq.masked_fill_(split, 1)
        view.seq_lens = seq
        # the host-side view comes from the step plan (which batch rows are split, their KV
        # tokens), never from ``split``: reading a device tensor here would wait for the
        # forward in flight and end overlap scheduling
        rows = step.batch_rows
        cpu = getattr(fb, "seq_lens_cpu", None)
        if cpu is not None:
            host = self._host_seq(bs, cpu.dtype)
            host.copy_(cpu)
            if rows:
                host.numpy()[[i for i, _ in rows]] = 1  # host memory: numpy, no torch dispatch
            view.seq_lens_cpu = host
        total = getattr(fb, "seq_lens_sum", None)
        if total is not None:
            view.seq_lens_sum = int(total) - sum(n - 1 for _, n in rows)
        self._inner_fb = (fb, view)
        return view

    def _device_seq(self, bs: int) -> torch.Tensor:
        """``[bs]`` device seq lens the inner backend reads: the graph-sized static tensor, or
        an eager one grown by powers of two (never allocated per step)."""
        if self._inner_seq is not None and bs <= self._inner_seq.shape[0]:
            return self._inner_seq[:bs]  # captured graphs read it: never replaced
        if self._eager_seq is None or bs > self._eager_seq.shape[0]:
            self._eager_seq = torch.ones(1 << (bs - 1).bit_length(), dtype=torch.int32,
                                         device=self.device)  # fmt: skip
        return self._eager_seq[:bs]

    def _host_seq(self, bs: int, dtype: torch.dtype) -> torch.Tensor:
        """``[bs]`` host seq lens of the inner backend's view, from two alternating buffers: an
        inner backend may still hold the previous step's (e.g. a host-side plan)."""
        bufs = self._host_seqs
        if bufs[0].shape[0] < bs or bufs[0].dtype != dtype:
            n = 1 << (bs - 1).bit_length()
            bufs = [torch.ones(n, dtype=dtype) for _ in range(2)]
        self._host_seqs = [bufs[1], bufs[0]]
        return bufs[1][:bs]

    def load(self, step):
        """Lay ``step``'s route out in the static exchange, once per step (from the metadata
        call, or from the first layer on a rank whose idle batch skips it)."""
        if self._forward is not None and self._forward.step is step:
            return self.current_ex
        ex = self.ensure_exchange()
        if step.num_rows > ex.shape.max_local:  # eager (needs_eager): a one-off bigger set
            ex = self._overflow(step.num_rows)  # freed once the next step replaces it
        self.current_ex = ex
        if step.reuses_route is not None and ex.loaded_route is step.reuses_route:
            ex.reload_local(step.route, tag=step.tag)  # only the home tails grew
        else:
            ex.load(step.route, rounds=step.rounds, tag=step.tag, row_keys=step.row_keys,
                    bucket=step.bucket, peers=step.peers)  # fmt: skip
        self._forward = LayerCursor(step)
        s = stats()
        s.active_steps += 1
        s.exchange_rows_split += step.num_rows
        s.exchange_eager_steps += int(self.needs_eager(step))
        s.exchange_node_steps += int(step.peers is not None and step.decode_split)
        s.guest_capacity_high_water = ex.high_water
        if step.tiles is not None:  # prefill chunks: the tile exchange too
            self.load_tiles(step)
        return ex

    def _overflow(self, rows: int):
        """Buffers for one step with more split rows than the static set holds (run eagerly, as
        SGLang runs a batch larger than its largest graph), released after it. Transient
        memory outside the static set: logged, as it is not reserved at start."""
        from dataclasses import replace

        from sglang_dcp.exchange.static import StaticExchange

        shape = replace(self.ex.shape, max_local=1 << (rows - 1).bit_length())
        big = StaticExchange(shape, self.device, num_row_keys=self.ex.row_slot.shape[0])
        logger.warning(
            "sglang_dcp: %d split rows on this rank exceed the exchange's %d home rows: one "
            "eager step on %.1f MiB of transient buffers (raise --dcp-max-guest-items to size "
            "the static set larger)", rows, self.ex.shape.max_local, big.nbytes / 2**20,
        )  # fmt: skip
        return big

    def _view_for_inner(self, fb):
        held = self._inner_fb
        return held[1] if held is not None and held[0] is fb else fb

    # -- per-layer constants, read from the model once -------------------------------------
    def layer_scaling(self, layer_id: int) -> float:
        """``sm_scale`` of layer ``layer_id``, read from the model's ``RadixAttention`` modules (a
        rank serving guest items for a layer it never ran attention for needs it too)."""
        if self._scaling is None:
            from sglang.srt.layers.radix_attention import RadixAttention

            self._scaling, self._kv_scales = {}, {}
            for m in self._runner.model.modules():
                # MLA layers also hold an MHA RadixAttention (prefill): take the exchange's
                if isinstance(m, RadixAttention) and (
                    m.layer_id not in self._scaling or m.qk_head_dim == self.head_dim
                ):
                    self._scaling[m.layer_id] = float(m.scaling)
                    quantized = m.k_scale is not None and m.v_scale is not None
                    self._kv_scales[m.layer_id] = {  # made once, on the device (graph-safe)
                        name: torch.full((1,), float(value) if quantized else 1.0,
                                         dtype=torch.float32, device=self.device)
                        for name, value in (("k_scale", getattr(m, "k_scale_float", 1.0)),
                                            ("v_scale", getattr(m, "v_scale_float", 1.0)))
                    }  # as triton_backend.forward_decode: no scales loaded means 1.0  # fmt: skip
        return self._scaling[layer_id]

    def layer_kv_scales(self, layer_id: int) -> dict:
        """``k_scale``/``v_scale`` of layer ``layer_id``'s FP8 KV cache: ``[1]`` fp32 device
        tensors made once (1.0 when none loaded)."""
        self.layer_scaling(layer_id)
        return self._kv_scales[layer_id]
