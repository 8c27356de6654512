"""Scheduler side of DCP serving (SGLang 0.5.21): placements at home, the step header, shard
moves, guest KV and its release. One ``RankRuntime`` per scheduler process (one DP rank).

Life of a request with KV on several ranks (docs/integration.md §2-§5):

1. The DP controller sends it to its home as a ``DcpGenerateReq`` (request + placement);
   ``around_handle_generate_request`` keeps the placement and ``after_add_request_to_queue``
   puts it on the ``Req`` as ``req.dcp``.
2-3. The home prefills the prompt; the **step header** (``sched_hooks.around_prepare_mlp_sync``,
   every rank every scheduler iteration, around SGLang's MLP-sync all-gather, which carries each
   rank's news flag: ``header.py``) gathers every rank's ``RankNews`` when a flag is up, and
   ``shipping.ship`` moves sealed ranges with ``exchange.transfer_shards`` over the TP group
   (receiver allocates, checksum confirm, the home frees its copy; a failed move leaves the
   range at home): after each prefill chunk (``prefill_shards.py``), or at the first decode.
4. Every step that decodes such a request, every rank gets a ``DcpStep`` (``current_step()``)
   and joins each layer's exchange (``backend.py``).
5. When the home releases the request's KV (finish, abort, retraction),
   ``around_release_kv_cache`` frees only what the home still holds (``around_free_kv_row``
   skips moved ranges) and the next header tells the shard ranks to free their guest slots.

The SGLang hooks that drive it are in ``sched_hooks.py``. The collectives run over SGLang's TP
group (``--tp-size == --dp-size``: its rank is the DP rank), on every rank in the same order:
the header's gather (news only) after SGLang's own, the exchange once per layer.
"""

from __future__ import annotations

from typing import Any

from sglang_dcp import env
from sglang_dcp.planner.base import Migration
from sglang_dcp.sglang import ledger, overlap, piece_release, shipping
from sglang_dcp.sglang.entries import GuestEntry, HomeEntry
from sglang_dcp.sglang.header import gather_news
from sglang_dcp.sglang.migration import MAX_PER_STEP, Migrations
from sglang_dcp.sglang.context import stats
from sglang_dcp.sglang.prefill_shards import away_pieces
from sglang_dcp.sglang.runtime_api import RuntimeApi
from sglang_dcp.sglang.step import Decoding, RankNews, plan_step
from sglang_dcp.sglang.step_build import (
    DcpStep, check_against_batch, decodes_now, kv_len, rank_step,
)  # fmt: skip


class RankRuntime(RuntimeApi):
    """DCP state of one scheduler (DP rank); mutated by the data path only, the others call
    ``runtime_api.RuntimeApi``'s methods."""

    def __init__(self, scheduler) -> None:
        from sglang.srt.runtime_context import get_parallel

        par = get_parallel()
        self.tp_group = par.tp_group
        self.rank = self.tp_group.rank_in_group
        self.num_ranks = self.tp_group.world_size
        self.scheduler = scheduler
        # placements of requests SGLang has not queued yet (a grammar still compiling queues later)
        self.incoming: dict[str, Placement] = {}
        self.home: dict[str, HomeEntry] = {}
        # requests homed here with a multi-rank placement, from queueing to release: the only
        # requests a step header looks at (host work O(split requests), never O(batch))
        self.split_reqs: dict[str, Any] = {}
        self.seen_decode: dict[str, int] = {}  # rid -> decode_batch_idx at the last header
        self.guests: dict[str, GuestEntry] = {}
        self.landing: dict[int, tuple] = {}  # PD room -> (rid, receiver, aux): pd_landing.py
        self.landing_held: dict[int, float] = {}  # failed PD room -> release deadline: pd_cleanup
        self.releases: list[str] = []
        # req_pool_idx -> (batch row, KV tokens) of the split requests decoded here this step:
        # what the attention backend's host-side view needs, so it never reads a device tensor
        self.batch_rows: dict[int, tuple[int, int]] = {}
        self.row_pos: dict[str, int] = {}  # rid -> batch row at the last step (a cache)
        self.num_steps = 0
        self.step: DcpStep | None = None  # the step of the forward about to run
        self.prev_step: DcpStep | None = None  # the previous header's step (reused if predicted)
        self.after: tuple[Migration, ...] = ()  # prefill pieces shipped after the forward
        self.prefill_failed: dict[str, str] = {}  # rid -> why its prefill is aborted
        self.model_runner = None  # set by the step header hook
        self.page = max(1, int(getattr(scheduler, "page_size", 1) or 1))
        self._comm = self._xcomm = None
        from sglang_dcp.sglang.options import DcpOptions

        opts = DcpOptions.from_env()
        self.capacity = opts.max_guest_items
        self.ranks_per_node = opts.ranks_per_node  # the exchange's node scope (None: one node)
        self.ledger = ledger.RankLedger(self.rank)  # what the planner hears of shard moves
        self.migrations = Migrations(self.rank, self.num_ranks)  # the controller's asks
        from sglang_dcp.sglang.header import StepHeader

        self.header_state = StepHeader(self.rank, self.num_ranks)
        stats().dp_rank = self.rank

    # -- groups ---------------------------------------------------------------------------------
    @property
    def comm(self):
        """Communicator for the exchange and KV transfer: the TP group's device group (NCCL on
        GPU, gloo on CPU)."""
        if self._comm is None:
            from sglang_dcp.exchange.comm import TorchDistCommunicator

            self._comm = TorchDistCommunicator(self.tp_group.device_group)
        return self._comm

    @property
    def exchange_comm(self):
        """The per-layer exchange's communicator: SGLang's TP group coordinator (pynccl on GPU,
        graph-capturable; gloo on CPU)."""
        if self._xcomm is None:
            from sglang_dcp.exchange.comm import GroupCommunicator

            self._xcomm = GroupCommunicator(self.tp_group)
        return self._xcomm

    # -- requests -------------------------------------------------------------------------------
    def attach(self, req) -> None:
        p = self.incoming.pop(req.rid, None)
        if p is None:
            return
        req.dcp = p
        if p.degree > 1:
            self.split_reqs[req.rid] = req
        stats().count_degree(p.degree)

    def forget_unqueued(self, rid: str, grammar_queue) -> None:
        """After ``handle_generate_request``: drop the placement of a request SGLang answered
        without queueing (an input error); keep it while its grammar compiles."""
        if rid in self.incoming and not any(r.rid == rid for r in grammar_queue):
            del self.incoming[rid]

    def guest_tokens(self) -> int:
        return sum(g.slots.numel() for g in self.guests.values())

    def _refresh_gauges(self) -> None:
        s = stats()
        s.guest_kv_tokens = self.guest_tokens()
        s.guest_requests = len(self.guests)
        s.home_dcp_requests = sum(1 for h in self.home.values() if h.layout.moved)

    def released(self, req) -> None:
        """The home gave ``req``'s KV back (finish, abort, retraction): guests free theirs at
        the next header; a retracted request ships again after its new prefill."""
        h = self.home.pop(req.rid, None)
        if self.split_reqs.get(req.rid) is req and not req.is_retracted:
            del self.split_reqs[req.rid]
            self.seen_decode.pop(req.rid, None)
        if h is not None:
            self.ledger.released(req)
        self.migrations.forget(req.rid)
        if h is not None and h.layout.moved:
            self.releases.append(req.rid)
        self._refresh_gauges()

    def row_ranges_to_skip(self, req_pool_idx: int) -> list[tuple[int, int]] | None:
        """``layout.skip_rows`` of the request homed here on row ``req_pool_idx`` (a release)."""
        return next((h.layout.skip_rows() or None for h in self.home.values()
                     if getattr(h.req.kv, "req_pool_idx", None) == req_pool_idx), None)

    # -- the step header ------------------------------------------------------------------------
    def before_sync(self, local_batch, model_runner):
        """The header's first half, before SGLang's per-step gather: this rank's news and its
        flag in SGLang's row (``header.py``)."""
        news, decoding_reqs = self.news(local_batch, model_runner)
        decoding_here = local_batch is not None and local_batch.forward_mode.is_decode()
        self.header_state.set_news(news, decoding_here)
        self.header_state.gathered = None
        return news, decoding_reqs

    def after_sync(self, news, decoding_reqs, model_runner) -> DcpStep | None:
        """The header's second half, after SGLang's gather: every rank's news (one extra
        collective only if a flag was up, else the predictions), moves, the step."""
        from sglang.srt.model_executor.forward_batch_info import ForwardMode

        hs = self.header_state
        gathered = hs.any_news()
        hs.count(gathered)
        if gathered:
            all_news = gather_news(hs, news, ForwardMode.DECODE.value, self.tp_group.cpu_group)
        else:
            all_news = hs.predicted_news(ForwardMode.DECODE.value)
        moves = [m for n in all_news for m in n.moves]
        if moves or any(n.releases for n in all_news):  # the same on every rank
            overlap.wait_for_forward(model_runner)
        for n in all_news:
            for rid in n.releases:
                self._free_guest(rid)
        homes = {d.rid: d.home for n in all_news for d in n.decoding}
        # every rank's moves of this step; the failed ones (the same list everywhere)
        failed = shipping.ship(self, moves, model_runner, homes) if moves else []
        for h in decoding_reqs:
            h.layout = h.layout.with_offered(h.layout.sealed_end)
            h.shipped = True
        plan = plan_step(all_news, failed)
        self.after = plan.after
        if hs.gathered is not None:
            decoded = [m == ForwardMode.DECODE.value for m in hs.gathered[:, 5].tolist()]
        else:  # no table (SGLang skipped its gather): every rank sent its news
            decoded = [True] * self.num_ranks
        hs.remember(plan, decoded)
        self._refresh_gauges()
        return self.step_for(plan, predicted=not gathered, decoded=decoded)

    def step_for(self, plan, *, predicted: bool, decoded: list[bool]) -> DcpStep | None:
        """This rank's step of ``plan`` (``step_build.rank_step``)."""
        return rank_step(self, plan, predicted=predicted, decoded=decoded)

    def news(self, local_batch, model_runner) -> tuple[RankNews, list[HomeEntry]]:
        """This rank's news for the header: releases, and the split requests it decodes now
        with their shards (moves at the first decode step); O(split requests)."""
        news = RankNews(releases=self.releases)
        self.releases = []
        self.batch_rows = {}
        decoding_reqs = []
        budget = MAX_PER_STEP  # migrations this home starts this step
        if self.split_reqs and local_batch is not None and local_batch.forward_mode.is_extend():
            from sglang_dcp.sglang.prefill_shards import extend_news

            extend_news(self, local_batch, news, self.page)
        if self.split_reqs and local_batch is not None and local_batch.forward_mode.is_decode():
            if env.poison_moved():
                shipping.check_not_poisoned(self, local_batch, model_runner)
            for rid, req in list(self.split_reqs.items()):
                if req.finished() and req.kv.req_pool_idx is None:
                    del self.split_reqs[rid]  # ended without a release (never prefilled)
                    self.seen_decode.pop(rid, None)
                    continue
                if not decodes_now(req, self.seen_decode.get(rid, 0)):
                    continue
                self.seen_decode[rid] = req.decode_batch_idx
                p = req.dcp
                h = self.home.get(rid)
                if h is None or h.req is not req:
                    h = self.home[rid] = HomeEntry(req)
                if not h.shipped:  # first decode: ship what its prefill did not
                    new = away_pieces(p, h.layout.offered, p.shards[-1].start)
                    news.moves += [Migration(rid, self.rank, r, a, b) for r, a, b in new]
                    will_move = h.layout.with_moves(new)
                elif rid in self.migrations.pending:  # the controller's moves (migration.py)
                    asked = self._migrations(rid, h, kv_len(req), budget)
                    budget -= len(asked)
                    news.moves += asked
                    will_move = h.layout.with_moves((m.dst, m.start, m.end) for m in asked)
                else:
                    will_move = None
                n = kv_len(req)
                shards = h.shards_at(n) if will_move is None else will_move.shards(n)
                news.decoding.append(Decoding(rid, self.rank, shards))
                decoding_reqs.append(h)
            if decoding_reqs:
                self._find_batch_rows(local_batch.reqs, decoding_reqs)
            if env.poison_moved():
                check_against_batch(local_batch, self.split_reqs, [d.rid for d in news.decoding])
        return news, decoding_reqs

    def _find_batch_rows(self, reqs: list, decoding: list[HomeEntry]) -> None:
        """``batch_rows`` of the split requests decoded here: their rows in the batch's host list
        ``reqs``. The rows of the last step are checked first (O(split requests)); the batch is
        walked only when one moved (requests joined or left before it)."""
        pos, n = self.row_pos, len(reqs)
        if not all(0 <= pos.get(h.req.rid, n) < n and reqs[pos[h.req.rid]] is h.req
                   for h in decoding):  # fmt: skip
            pos = self.row_pos = {r.rid: i for i, r in enumerate(reqs) if r.rid in self.split_reqs}
        for h in decoding:
            self.batch_rows[int(h.req.kv.req_pool_idx)] = (pos[h.req.rid], kv_len(h.req))

    def _migrations(self, rid, h, n: int, budget: int) -> list[Migration]:
        dropped = self.migrations.dropped
        asked = self.migrations.take(rid, h.shards_at(n), n, budget)
        if self.migrations.dropped > dropped:  # the controller booked the dropped ones
            self.ledger.layout(rid, self.home)
        return asked

    def _free_guest(self, rid: str) -> None:
        """Give a released request's guest slots back, range by range through ``free_segment``
        (each range starts a page: no ``torch.unique`` host sync on a paged allocator)."""
        g = self.guests.pop(rid, None)
        if g is not None and not piece_release.keep_guest(self, rid, g):  # pieces stay cached
            shipping.free_guest(self.scheduler.token_to_kv_pool_allocator, g)
