"""Admission of a prompt larger than one rank's KV (prefill into shards, issue 18).

SGLang 0.5.21 sizes every check by one rank's pool: a prompt of ``max_req_input_len`` tokens or
more is refused (``validate_input_length``, ``max_req_input_len = min(context_len - 1, pool - 1)
- 5``), ``max_new_tokens`` is clipped to what fits beside the whole prompt
(``Scheduler.init_req_max_new_tokens``), and ``PrefillAdder.add_one_req`` waits until the whole
prompt fits in the free KV. With prefill into shards the home holds only its share of a split
request: its tail and one chunk on its way out. For such requests only (the DP controller's
planner placed them over several ranks, and ``--chunked-prefill-size`` is on) the checks see
that share:

- ``lifted_limits``: inside ``handle_generate_request`` the scheduler's ``max_req_len`` becomes
  the context length's, and its pool counts the tokens placed on other ranks as if free;
- ``prefill_credit``: ``add_one_req`` sees the tokens that will leave the home (less one chunk)
  as free while it decides.

A prompt larger than the whole cluster never gets here: the planner answers HTTP 400
(``Policy.never_fits``). The planner's books cover the home's transient (``planner/prefill.py``).
"""

from __future__ import annotations

from contextlib import contextmanager

from sglang_dcp.sglang.prefill_shards import away_tokens


def _shards_prefill(sched) -> bool:
    """The home holds only its share: prefill into shards (a chunk), or a PD decode server,
    where the prompt's KV lands in its shards (``pd_admission.py``)."""
    if getattr(getattr(sched, "disaggregation_mode", None), "value", None) == "decode":
        return True
    chunk = getattr(sched, "chunked_prefill_size", None)
    return chunk is not None and chunk > 0


@contextmanager
def lifted_limits(sched, placement, prompt_len: int):
    """``handle_generate_request``'s length checks for a split ``placement`` of a prompt too long
    for one rank: ``max_req_len`` from the context length, the pool plus the tokens placed away.
    Restored on exit (the checks run synchronously inside the call)."""
    if (placement is None or placement.degree <= 1 or not _shards_prefill(sched)
            or prompt_len < sched.max_req_input_len):  # fmt: skip
        yield
        return
    saved = sched.max_req_len, sched.max_req_input_len, sched.max_total_num_tokens
    sched.max_req_len = sched.model_config.context_len - 1
    sched.max_req_input_len = sched.max_req_len - 5
    sched.max_total_num_tokens = saved[2] + away_tokens(placement)
    try:
        yield
    finally:
        sched.max_req_len, sched.max_req_input_len, sched.max_total_num_tokens = saved


def prefill_credit(req, chunk: int | None) -> int:
    """KV tokens of ``req``'s prompt that ``PrefillAdder`` may count as free: the tokens placed
    on other ranks, less the one chunk the home holds before it ships (0: not a split request
    starting its prefill into shards)."""
    p = getattr(req, "dcp", None)
    if p is None or p.degree <= 1 or not chunk or chunk <= 0 or len(req.prefix_indices):
        return 0
    return max(0, away_tokens(p) - chunk)


def around_add_one_req(original, self, req, *args, **kwargs):
    """``PrefillAdder.add_one_req(req, has_chunked_req, truncation_align_size)``
    (schedule_policy.py:1347; it also runs ``add_one_req_ignore_eos``): admit a split request on
    its home's share of the prompt."""
    credit = prefill_credit(req, self.rem_chunk_tokens)
    budget = getattr(self, "memory_budget", None)
    if not credit or budget is None:
        return original(self, req, *args, **kwargs)
    budget.total_offset -= credit
    budget.current_offset -= credit
    try:
        return original(self, req, *args, **kwargs)
    finally:
        budget.total_offset += credit
        budget.current_offset += credit
