"""The planner inside SGLang's DP controller: route each request to the home rank it chooses.

``DcpDispatcher`` is SGLang-free glue around a ``planner.Policy``: it reads three fields of a
tokenized request (``rid``, the prompt length, ``max_new_tokens``, and ``routed_dp_rank`` as a
pinned home) and talks to SGLang only through the callables it is given. ``attach(controller)``
(SGLang 0.5.21 ``DataParallelController``) builds one and swaps it in as ``controller.dispatching``.

An admitted request goes to its home rank together with its placement (``send(rank, req,
placement)``); the home scheduler ships the sealed shards to their ranks after prefill
(``datapath.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sglang_dcp import env
from sglang_dcp.sglang.fit import FitSearch, page_up, prompt_len, sglang_max_new_bound
from sglang_dcp.sglang.options import DEFAULT_QUEUE_MAX_BYPASS
from sglang_dcp.sglang.wait_queue import WaitQueue
from sglang_dcp.types import Rejection, Request

logger = logging.getLogger(__name__)

__all__ = ["DcpDispatcher", "page_up", "prompt_len", "sglang_max_new_bound"]
class DcpDispatcher(FitSearch, WaitQueue):
    """Admit through ``policy``; send to the home rank; free on ``finished``.

    - ``send(rank, req, placement)``: hand the request to DP rank ``rank``'s scheduler, with
      the planner's placement (``None``: routed without a reservation).
    - ``reject(req, reason)``: answer the client with an error (HTTP 400); the request never
      reaches a scheduler. Used for rejections that waiting cannot cure.
    - ``active_ranks()``: ranks that may receive requests (``routed_dp_rank`` is checked).
    - ``max_new_bound(prompt_len)``: the most new tokens SGLang lets the request decode
      (``sglang_max_new_bound``; ``None``: no bound). A reservation is never larger, and a
      request that leaves ``max_new_tokens`` unset (``null``: "up to the context length")
      gets the largest value the planner could ever hold for it (``fit_max_new``), written
      into its ``sampling_params.max_new_tokens``: its home stops it there with
      ``finish_reason: length``, so the planner's books stay exact.
    - ``empty_policy()``: a new, empty policy like ``policy``; "could ever be placed" is
      ``admit`` into it (without it: ``never_fits``, or one rank's capacity for the baselines).
    - ``untracked_prefixes``: rids routed without a reservation. SGLang's health probes
      (``HEALTH_CHECK...``) are dropped unanswered by a busy scheduler (scheduler.py:2093),
      so no finish would ever free them.
    - ``clock()``: monotonic seconds. The policy gets ``on_time(ms, 0)`` before each batch of
      admissions, as in the simulator: ``dcp``'s time windows run on it (``planner/budget.py``;
      the controller counts no decode steps, and no policy the server offers reads them).

    A retryable rejection (the cluster is full *now*):

    - with ``queue=True`` (policies that split: ``dcp``, ``uniform``) the request waits here, in
      arrival order (``wait_queue.py``), and every ``finished`` retries the waiting requests
      (first fit: a later request that fits goes ahead of an earlier one that does not), as
      does ``poll`` once a timed wait is over (``Rejection.retry_at_ms``). Nothing reaches a
      scheduler without a reservation, so the planner's books are exact. ``drop_queued``
      removes waiting requests that the client aborted.
    - ``max_bypass`` bounds first fit, so a long request is not starved by a stream of short
      ones: once the oldest waiting request has been passed over ``max_bypass`` times (a later
      request admitted while it waited), nothing is admitted ahead of it; new requests queue
      behind it until it fits. ``0`` is strict arrival order, ``None`` unbounded first fit.
    - otherwise (the baselines, which model SGLang's own dispatch) it goes to the requested or
      least-loaded rank without a reservation ("overflow") and SGLang's scheduler queues it.
    """

    def __init__(
        self,
        policy,
        *,
        send: Callable[[int, Any], None],
        reject: Callable[[Any, str], None],
        active_ranks: Callable[[], Sequence[int]],
        max_new_bound: Callable[[int], int] | None = None,
        empty_policy: Callable[[], Any] | None = None,
        untracked_prefixes: tuple[str, ...] = (),
        verbose: bool | None = None,
        queue: bool = False,
        max_bypass: int | None = DEFAULT_QUEUE_MAX_BYPASS,
        prefixes=None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bypass is not None and max_bypass < 0:
            raise ValueError(f"max_bypass must be >= 0 or None, got {max_bypass}")
        self.policy = policy
        self._clock = clock
        self._send = send
        self.degree_count: dict[int, int] = {}
        self._reject = reject
        self._active_ranks = active_ranks
        self.max_new_bound = max_new_bound
        self.empty_policy = empty_policy
        self.untracked_prefixes = untracked_prefixes
        verbose = env.planner_log() if verbose is None else verbose
        self._log = logger.info if verbose else logger.debug
        self.num_overflow = 0
        self.num_rejected = 0
        self.queue_enabled = queue
        self.queue: dict[str, Any] = {}  # rid -> request, arrival order
        self.max_bypass = max_bypass
        self.bypassed: dict[str, int] = {}  # rid in queue -> later requests admitted before it
        self.prefixes = prefixes  # planner.prefix.PrefixDirectory, or None
        self.pieces = None  # piece_books.PieceBooks: cached pieces of split requests, or None
        self._keys: dict[str, list[bytes]] = {}  # rid -> its prompt's chain keys, until placed

    def state(self) -> str:
        """One-line read-only view of the planner, as logged after every change."""
        p = self.policy
        return (
            f"live={len(p)} kv={p.kv_tokens()} batch={p.batch_sizes()} waiting={len(self.queue)}"
        )

    def _tick(self) -> None:  # the policy's clock, before a batch of admissions
        self.policy.on_time(self._clock() * 1e3, 0)

    def dispatch(self, req: Any) -> None:
        self._tick()
        rid = req.rid
        home = getattr(req, "routed_dp_rank", None)
        if home is not None and home not in self._active_ranks():
            # As SGLang's maybe_external_dp_rank_routing (data_parallel_controller.py:732).
            self.reject(req, f"DP rank {home} is not active.")
            return
        if self.untracked_prefixes and str(rid).startswith(self.untracked_prefixes):
            self._send(home if home is not None else self._least_loaded(), req, None)
            return
        if getattr(req.sampling_params, "max_new_tokens", 0) is None:
            fit = self.fit_max_new(prompt_len(req), home)
            if fit is None:
                self.reject(req, self._never_reason(req))
                return
            req.sampling_params.max_new_tokens = fit
            self._log("sglang_dcp: planner budget rid=%s max_new_tokens unset -> %d", rid, fit)
        if rid in self.policy or rid in self.queue:
            logger.warning("sglang_dcp: request %s is already live; sent to its home again", rid)
            if rid in self.queue:
                self.queue[rid] = req
                return
            placement = self.policy.placement(rid)
            self._send(placement.home_rank, req, placement)
            return
        head = self._starving_head()
        if head is not None:
            # it may not go ahead of the head, but one that can never fit is answered now
            never = self.policy.never_fits(self._request(req), home_rank=home)
            if never is not None:
                self.reject(req, self._never_reason(req, never.reason))
                return
            self._enqueue(req, f"waits behind {head}, passed over {self.bypassed[head]} times")
            return
        placement = self._admit(req)
        if isinstance(placement, Rejection):
            if not placement.retryable:
                self.reject(req, self._never_reason(req, placement.reason))
                return
            if self.queue_enabled:
                self._enqueue(req, placement.reason, placement)
                return
            # A baseline that chose a full rank keeps the request waiting for that rank (as
            # SGLang's DP dispatch does): send it there, and finish() will drop the entry.
            waiting = self.policy.waiting_rank(rid)
            if home is not None:
                rank = home
            elif waiting is not None:
                rank = waiting
            else:
                rank = self._least_loaded()
            self.num_overflow += 1
            self._log("sglang_dcp: planner overflow rid=%s rank=%d (%s) %s",
                      rid, rank, placement.reason, self.state())  # fmt: skip
            self._send(rank, req, None)
            return
        for waiting in self.queue:  # every waiting request was passed over
            self.bypassed[waiting] += 1
        self._placed(req, placement)

    def _request(self, req: Any) -> Request:
        p = prompt_len(req)
        max_new = getattr(req.sampling_params, "max_new_tokens", None)
        bound = self._bound(p)
        max_new = bound if max_new is None else min(max_new, bound)
        return Request(req.rid, p, max_new)

    def _admit(self, req: Any):
        home = getattr(req, "routed_dp_rank", None)
        request = self._request(req)
        if home is None and self.pieces is not None:  # its prompt extends a cached layout
            got = self.pieces.admit(self.policy, req, request)
            if got is not None:
                self._log("sglang_dcp: planner pieces rid=%s home=%d cached=%d", req.rid,
                          got.home_rank, got.shards[-1].start)  # fmt: skip
                return got
        steps = getattr(self.policy, "whole_steps", None)  # only ``dcp`` weighs prefixes
        if home is None and self.prefixes is not None and steps is not None:
            from sglang_dcp.planner.prefix import prefix_home, split_home

            resv = page_up(request.prompt_len + request.max_new_tokens, self.policy.page)
            cached = self.prefixes.match(self._chain_keys(req))
            whole = steps(resv)
            pinned = prefix_home(whole, cached, prompt_len=request.prompt_len,
                                 decode_steps=request.max_new_tokens,
                                 prefill_us=self.policy.profile.prefill_us)  # fmt: skip
            if pinned is None:  # split anyway: its home's tree serves the prefix
                pinned = split_home(whole, cached)
            if pinned is not None:
                got = self.policy.admit(request, home_rank=pinned)
                if not isinstance(got, Rejection):
                    self._log("sglang_dcp: planner prefix rid=%s home=%d cached=%d", req.rid,
                              pinned, cached[pinned])  # fmt: skip
                    return got
        return self.policy.admit(request, home_rank=home)

    def _chain_keys(self, req: Any) -> list[bytes]:
        """``prefixes.keys`` of the request's prompt, hashed once while it waits or is placed
        (dropped when it is placed, answered or leaves the queue)."""
        keys = self._keys.get(req.rid)
        if keys is None:
            keys = self._keys[req.rid] = self.prefixes.keys(getattr(req, "input_ids", None) or ())
        return keys

    def _placed(self, req: Any, placement) -> None:
        if self.prefixes is not None and placement.degree == 1:  # its home's tree gets it
            self.prefixes.record(placement.home_rank, self._chain_keys(req))
        self._keys.pop(req.rid, None)
        self.degree_count[placement.degree] = self.degree_count.get(placement.degree, 0) + 1
        self._log("sglang_dcp: planner admit rid=%s home=%d degree=%d %s",
                  req.rid, placement.home_rank, placement.degree, self.state())  # fmt: skip
        self._send(placement.home_rank, req, placement)

    def reject(self, req: Any, reason: str) -> None:
        self._keys.pop(req.rid, None)
        self.num_rejected += 1
        self._log("sglang_dcp: planner reject rid=%s (%s) %s", req.rid, reason, self.state())
        self._reject(req, reason)

    def finished(self, rids: Sequence[str] | None) -> None:
        """Requests that finished or were aborted (any order; duplicates and unknown rids are
        ignored)."""
        freed = False
        for rid in rids or ():
            if rid in self.policy or self.policy.waiting_rank(rid) is not None:
                self.policy.finish(rid)
                freed = True
                self._log("sglang_dcp: planner finish rid=%s %s", rid, self.state())
        if freed and self.queue:
            self.drain()

    def _least_loaded(self) -> int:
        kv = self.policy.kv_tokens()
        return min(self._active_ranks(), key=lambda r: (kv[r], r))
