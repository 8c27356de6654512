"""PD decode admission of a prompt larger than one decode rank's SGLang pool (issue 24, item 3).

SGLang 0.5.21's decode server sizes its admission by one rank's pool and the whole prompt. For a
request the planner lands over several ranks (``pd_landing.py``) its home holds only its own
ranges (the tail), so these checks must see only that share:

- ``Scheduler.handle_generate_request``: ``max_req_input_len`` and the ``max_new_tokens`` clip
  (``admission.lifted_limits``, shared with prefill into shards; on a PD decode server it applies
  without a prefill chunk);
- ``DecodePreallocQueue._check_if_req_exceed_kv_capacity`` (decode.py:891), run by ``add``
  before the request is queued (so before ``req.dcp`` is set: the placement is still in
  ``RankRuntime.incoming``): a prompt longer than the pool is answered HTTP 400;
- ``DecodePreallocQueue._required_admission_tokens`` (decode.py:482), in ``pop_preallocated``:
  ``max(prompt + reserve, prompt + max_new - retractable)`` against the free KV. This is the
  check that kept such a home in the prealloc queue forever (until its room timed out) when only
  the first one was lifted.

Each counts the prompt less the tokens the placement lands on other ranks (``away_tokens``); a
request placed on one rank sees SGLang's checks unchanged. The reserve beside a landing request
is its ``max_new_tokens`` when that is less than ``--num-reserved-decode-tokens`` (512): the
planner placed its new tokens on its home's tail (the placement's last shard), and a home whose
tail fills its pool to within 512 tokens would otherwise wait forever (2248 tokens on four
1024-token pools: 520 prompt tokens at home, 1032 needed with 512). The holders allocate outside SGLang's admission
(``pd_landing.on_land``), within the planner's books.
"""

from __future__ import annotations

from sglang_dcp.sglang.pd_landing import is_landing
from sglang_dcp.sglang.prefill_shards import away_tokens


def _landing_placement(req):
    """The multi-rank placement of ``req`` (``req.dcp``, or the one that came with it while
    SGLang builds and queues it), else ``None``."""
    if is_landing(req):
        return req.dcp
    from sglang_dcp.sglang.context import runtime

    rt = runtime()
    p = None if rt is None else rt.incoming.get(req.rid)
    return p if p is not None and p.degree > 1 else None


def around_check_if_req_exceed_kv_capacity(original, self, req):
    """``DecodePreallocQueue._check_if_req_exceed_kv_capacity(req)``: a landing request's home
    share against the pool (the tokens placed away count as capacity while it checks)."""
    p = _landing_placement(req)
    if p is None:
        return original(self, req)
    saved = self.max_total_num_tokens
    self.max_total_num_tokens = saved + away_tokens(p)
    try:
        return original(self, req)
    finally:
        self.max_total_num_tokens = saved


def around_required_admission_tokens(original, self, req, allocated_tokens, prefix_len,
                                     retractable_tokens):  # fmt: skip
    """``DecodePreallocQueue._required_admission_tokens(req, allocated_tokens, prefix_len,
    retractable_tokens)``: both terms of SGLang's max count the whole prompt; a landing request
    needs them less the tokens placed on other ranks, with the reserve its new tokens need."""
    p = _landing_placement(req)
    if p is None:
        return original(self, req, allocated_tokens, prefix_len, retractable_tokens)
    saved = self.num_reserved_decode_tokens
    max_new = req.sampling_params.max_new_tokens  # None: SGLang's default stands
    self.num_reserved_decode_tokens = saved if max_new is None else min(saved, max_new)
    try:
        need = original(self, req, allocated_tokens, prefix_len, retractable_tokens)
    finally:
        self.num_reserved_decode_tokens = saved
    return need - away_tokens(p)
