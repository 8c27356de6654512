"""``meta_info["dcp"]`` from the home scheduler to the client, and the ``/v1/loads`` ``dcp``
section (observe.py), each hook run against the real SGLang method it wraps."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)

from sglang.srt.managers import tokenizer_manager as tm_mod  # noqa: E402
from sglang.srt.managers.io_struct import unwrap_from_pickle, wrap_as_pickle  # noqa: E402
from sglang.srt.managers.load_snapshot import LoadSnapshot  # noqa: E402
from sglang.srt.managers.schedule_batch import Req  # noqa: E402
from sglang.srt.managers.scheduler_components.load_inquirer import (  # noqa: E402
    SchedulerLoadInquirer,
)
from sglang.srt.managers.scheduler_components.output_streamer import (  # noqa: E402
    SchedulerOutputStreamer,
)
from sglang.srt.managers.tokenizer_manager import ReqState, TokenizerManager  # noqa: E402

from sglang_dcp.sglang import context, hooks, observe, rank_stats  # noqa: E402
from sglang_dcp.sglang.layout import KvLayout  # noqa: E402
from sglang_dcp.types import Placement, Shard  # noqa: E402

P0 = Placement("a", 1, (Shard(0, 0, 128), Shard(1, 128, 150)))
P1 = Placement("b", 0, (Shard(0, 0, 9),))


def req(rid, placement=None):
    """A request after its prefill output whose sealed shards all shipped."""
    r = object.__new__(Req)
    r.rid = rid
    if placement is not None:
        r.dcp = placement
        r.origin_input_ids, r.output_ids = list(range(placement.shards[-1].end)), [7]
        r.dcp_layout = KvLayout.of(placement, [(s.rank, s.start, s.end)
                                               for s in placement.shards[:-1]])  # fmt: skip
    return r


def streamer():
    return object.__new__(SchedulerOutputStreamer)


def build_info(reqs):
    return observe.around_build_additional_customized_info(
        SchedulerOutputStreamer.build_additional_customized_info, streamer(), reqs
    )


def test_hooks_match_the_pinned_methods():
    for h in hooks.HOOKS:
        if h.hook.startswith(("sglang_dcp.sglang.observe:", "sglang_dcp.sglang.placements:",
                              "sglang_dcp.sglang.metrics:")):  # fmt: skip
            hooks.check(h.target, h.params)


def test_streamer_adds_one_placement_per_emitted_request():
    info = build_info([req("a", P0), req("x"), req("b", P1)])
    assert info == {"dcp": [P0.to_json(), None, P1.to_json()]}
    assert info["dcp"][0] == {
        "home_rank": 1, "degree": 2, "shard_ranks": [0, 1], "shards": [[0, 0, 128], [1, 128, 150]],
    }  # fmt: skip


def test_batches_without_placements_carry_nothing_extra():
    assert build_info([req("x"), req("y", None)]) == {}
    assert build_info([]) == {}


def test_the_opt_in_flag_is_set_and_rust_egress_refuses_it(monkeypatch):
    monkeypatch.setattr(SchedulerOutputStreamer, "has_additional_customized_info", False)
    observe.enable_output_info()
    assert SchedulerOutputStreamer.has_additional_customized_info is True
    fields = dict(send_to_detokenizer=None, tree_cache=None, server_args=None,
                  is_generation=True, spec_algorithm=None, disaggregation_mode=None,
                  enable_hicache_storage=lambda: False)  # fmt: skip
    SchedulerOutputStreamer(**fields)  # zmq egress: fine
    with pytest.raises(ValueError, match="not supported by Rust egress"):
        SchedulerOutputStreamer(**fields, rust_server=object())


def _tokenizer_side(customized_info, index, state, meta_info=None):
    meta_info = {} if meta_info is None else meta_info
    # As _handle_batch_output: the customized_info arrives pickled (output_streamer.py:742).
    info = unwrap_from_pickle(wrap_as_pickle(customized_info))
    observe.around_update_request_meta_info(
        TokenizerManager.update_request_meta_info,
        object.__new__(TokenizerManager), meta_info, state, info, index, None,
    )  # fmt: skip
    return meta_info


def new_state():
    return ReqState(out_list=[], finished=False, event=None, obj=None, time_stats=None)


def test_meta_info_gets_the_request_placement_and_other_keys_still_accumulate():
    info = {"dcp": [P0.to_json(), None], "probe": [[1, 2], [3]]}
    s0, s1 = new_state(), new_state()
    m0 = _tokenizer_side(info, 0, s0)
    m1 = _tokenizer_side(info, 1, s1)
    assert m0 == {"dcp": P0.to_json(), "probe": [1, 2]}
    assert m1 == {"probe": [3]}  # no placement: no key
    assert "dcp" not in s0.customized_info_accumulated


def test_every_streamed_chunk_has_the_same_placement():
    state = new_state()
    chunks = [_tokenizer_side({"dcp": [P0.to_json()]}, 0, state) for _ in range(3)]
    assert all(c["dcp"] == P0.to_json() for c in chunks)
    # Incremental streaming slices accumulated keys per chunk; ours is not one of them.
    tm_mod._slice_streaming_output_meta_info(chunks[-1], 2, state.customized_info_accumulated)
    assert chunks[-1]["dcp"] == P0.to_json()


def test_loads_section_is_every_rank_stat_number(monkeypatch):
    s = rank_stats.RankStats(dp_rank=1, guest_kv_tokens=640, guest_requests=2,
                             exchange_ms_last_step=1.5, moves_done=3)  # fmt: skip
    s.count_degree(2)
    monkeypatch.setattr(context, "_CTX", context.RankContext(stats=s))
    snap = observe.after_get_loads(
        LoadSnapshot(dp_rank=1, num_used_tokens=77), object.__new__(SchedulerLoadInquirer)
    )
    assert snap.dcp == {**observe.loads_section(s), "kv_tokens": 77}
    assert snap.dcp["guest_kv_tokens"] == 640 and snap.dcp["exchange_ms_last_step"] == 1.5
    assert "dp_rank" not in snap.dcp and "degree_count" not in snap.dcp
    assert set(snap.dcp) == {
        "guest_kv_tokens", "guest_requests", "home_dcp_requests", "guest_items_last_step",
        "exchange_ms_last_step", "active_steps", "exchange_ms_total", "moves_done",
        "moves_failed", "moved_tokens", "migrations_done", "exchange_rows_split", "exchange_rows_unsplit",
        "exchange_eager_steps", "exchange_node_steps", "exchange_capacity", "guest_capacity_high_water", "header_steps",
        "header_gathers", "header_forward_waits",
        "prefill_kv_reads_tiles", "prefill_kv_reads_ideal", "prefill_kv_reads_per_row",
        "planner_kv_tokens", "planner_guest_kv_tokens", "kv_tokens",
        "piece_kv_tokens", "planner_piece_kv_tokens", "pieces_evicted",
    }  # fmt: skip
    assert snap.to_dict({"dcp"})["dcp"] == snap.dcp and snap.to_dict(None)["dcp"] == snap.dcp


def test_a_wheel_without_patch_0002_fails_at_startup(monkeypatch):
    observe.require_load_snapshot_section()
    fake = SimpleNamespace(LoadSnapshot=SimpleNamespace(__struct_fields__=("dp_rank",)))
    monkeypatch.setitem(__import__("sys").modules, "sglang.srt.managers.load_snapshot", fake)
    with pytest.raises(observe.PatchMissingError, match="make patch"):
        observe.require_load_snapshot_section()
