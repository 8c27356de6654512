"""Every runtime hook sglang-dcp puts on SGLang, in one table (pinned: SGLang 0.5.21).

Each ``Hook`` names its upstream target (a dotted path for ``HookRegistry``), the hook type, the
parameter names the target must have, our function, and where and when it is installed.
``install()`` asserts each target's signature before registering it (a moved pin fails loudly at
startup); ``USES`` lists SGLang callables the glue calls, with the same check (both in
``test/sglang/test_hooks.py``).

| target (file under sglang/srt/, then the hooked name)   | type   | ours (sglang_dcp.sglang.) | where/when  |
|---------------------------------------------------------|--------|---------------------------|-------------|
| managers/data_parallel_controller.py:143                | AFTER  | plugin. (planner in DPC)  | any/always  |
|   DataParallelController.__init__                       |        |                           |             |
| managers/tokenizer_manager.py:854 (async generator)     | AROUND | guard. (types, shapes)    | launcher/always|
|   TokenizerManager.generate_request                     |        |                           |             |
| managers/tokenizer_manager.py:1259                      | BEFORE | guard. (token ids)        | launcher/always|
|   TokenizerManager._validate_one_request                |        |                           |             |
| entrypoints/openai/serving_base.py:72 (async)           | AROUND | guard. (bool as int)      | launcher/always|
|   OpenAIServingBase.handle_request                      |        |                           |             |
| managers/tokenizer_manager.py:2345 (async)              | AROUND | notices. (finish notice)  | launcher/dcp|
|   TokenizerManager._handle_batch_output                 |        |                           |             |
| managers/tokenizer_manager.py:3370                      | AFTER  | notices. (abort notice)   | launcher/dcp|
|   TokenizerManager._handle_abort_req                    |        |                           |             |
| managers/scheduler.py:1718                              | AFTER  | sched_hooks (rank runtime)| any/dcp     |
|   Scheduler.init_request_dispatcher                     |        |                           |             |
| managers/scheduler.py                                   | AROUND | sched_hooks (placement in)| any/dcp     |
|   Scheduler.handle_generate_request                     |        |                           |             |
| managers/scheduler.py:3266                              | AFTER  | sched_hooks (``req.dcp``) | any/dcp     |
|   Scheduler._add_request_to_queue                       |        |                           |             |
| managers/scheduler_components/output_streamer.py:218    | AROUND | observe. (meta_info out)  | any/dcp     |
|   SchedulerOutputStreamer.build_additional_customized_info |     |                           |             |
| managers/tokenizer_manager.py:2666                      | AROUND | observe. (meta_info in)   | launcher/dcp|
|   TokenizerManager.update_request_meta_info             |        |                           |             |
| managers/scheduler_components/load_inquirer.py:95       | AFTER  | observe. (/v1/loads dcp)  | any/dcp     |
|   SchedulerLoadInquirer.get_loads                       |        |                           |             |
| managers/scheduler.py:3641                              | AFTER  | metrics. (Prometheus)     | any/dcp     |
|   Scheduler.get_next_batch_to_run                       |        |                           |             |
| managers/scheduler_components/dp_attn.py:412            | AROUND | sched_hooks (step header) | any/shard   |
|   dp_attn.prepare_mlp_sync_batch_raw                    |        |                           |             |
| managers/scheduler.py:4338 Scheduler.run_batch          | AFTER  | sched_hooks (ship chunks) | any/shard   |
| managers/scheduler.py:3537                              | AROUND | prefill_shards. (abort)   | any/shard   |
|   Scheduler.process_pending_chunked_abort               |        |                           |             |
| managers/schedule_policy.py:1347                        | AROUND | admission. (home share)   | any/shard   |
|   PrefillAdder.add_one_req                              |        |                           |             |
| mem_cache/base_prefix_cache.py:468                      | AROUND | sched_hooks (skip moved)  | any/shard   |
|   BasePrefixCache.free_kv_row                           |        |                           |             |
| mem_cache/common.py:292                                 | AROUND | sched_hooks (release)     | any/shard   |
|   common.release_kv_cache                               |        |                           |             |
| managers/schedule_batch.py:1702 Req._compute_max_prefix_len | AROUND | radix. (no match) | any/shard |
| mem_cache/common.py:172 common.maybe_cache_unfinished_req | AROUND | radix. (no insert)   | any/shard   |
| mem_cache/{unified_,}radix_cache.py (cached pieces)   | AROUND | radix_pieces.             | any/shard   |
|   RadixCache.evictable_size RadixCache.evict RadixCache.reset UnifiedRadixCache.reset      |
|   UnifiedRadixCache.evictable_size UnifiedRadixCache.full_evictable_size UnifiedRadixCache._evict |
| managers/schedule_batch.py:1581 Req.init_next_round_input | AFTER | piece_adopt. (adopted) | any/shard |
| managers/scheduler_components/invariant_checker.py:95   | AROUND | sched_hooks (guest slots) | any/shard   |
|   SchedulerInvariantChecker._check_full_pool            |        |                           |             |
| model_executor/model_runner_components/                 | AROUND | backend. (wrap backend)   | any/shard   |
|   attention_backend_setup._build_resolved_backend (l.201) |      |                           |             |
| layers/layer_boundary/stage.py:168                      | AROUND | backend. (idle ranks)     | any/shard   |
|   StageBoundary.finish                                  |        |                           |             |
| disaggregation/decode.py:2049 DecodePreallocQueue._alloc_for_decode_prealloc | AROUND | pd_landing. | any/shard |
| disaggregation/decode.py:2054 DecodePreallocQueue._transfer_page_indices | AROUND | pd_landing. | any/shard |
| disaggregation/decode.py:891/482 DecodePreallocQueue._check_if_req_exceed_kv_capacity | AROUND | pd_admission. | any/shard |
|   DecodePreallocQueue._required_admission_tokens (a landing request's home share)     |           |
| disaggregation/mooncake/conn.py:1051 MooncakeKVManager.send_kvcache | AROUND | pd_landing. | any/always |
| managers/scheduler_components/dp_attn.py:128/145/175    | AFTER  | header. (news flag on     | any/shard   |
|   MLPSyncBatchInfo._get_local_tensor                    |        |   SGLang's sync row)      |             |
|   MLPSyncBatchInfo._get_fallback_tensor                 |        |                           |             |
|   MLPSyncBatchInfo.all_gather                           |        |                           |             |
| mem_cache/kv_cache_configurator.py:2177                 | AROUND | move_reserve. (shard-move | any/shard   |
|   KVCacheConfigurator._profile_available_bytes         |        |   staging in the budget)  |             |
| model_executor/runner/decode_cuda_graph_runner.py:54    | AROUND | graphs. (plain + dcp      | any/shard   |
|   decode_cuda_graph_runner.create_attention_graph_variants | AROUND | decode graphs)        |             |
|   (the imported name; defined in graph_variants.py:46)  |        |                           |             |

"launcher": only in the launching process, where SGLang runs the tokenizer manager (one
tokenizer worker; ``launch.py`` refuses ``--tokenizer-worker-num > 1`` with the planner on).
"dcp": only when the launcher's ``--dcp-policy`` is not ``off`` (``options.DcpOptions``).
"shard": only when requests may span ranks (``--dcp-max-degree > 1``, ``DcpOptions.sharding``).

Not hooks, set up by ``plugin.register()`` with them: see ``plugin.py``.
"""

from __future__ import annotations

import multiprocessing
import pkgutil
from dataclasses import dataclass

from sglang_dcp.sglang.uses import (  # noqa: F401  (USES: SGLang callables the glue calls)
    USES,
    HookSignatureError,
    check,
    params_of,
)

_DPC, _TM = ("sglang.srt.managers.data_parallel_controller.DataParallelController",
              "sglang.srt.managers.tokenizer_manager.TokenizerManager")
_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_SG = "sglang_dcp.sglang"
_DP, _RADIX = f"{_SG}.sched_hooks", f"{_SG}.radix"
_PREALLOC, _PD = "sglang.srt.disaggregation.decode.DecodePreallocQueue", f"{_SG}.pd_landing"
_STREAMER = "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
_LOADS = "sglang.srt.managers.scheduler_components.load_inquirer.SchedulerLoadInquirer"
_MLPSYNC = "sglang.srt.managers.scheduler_components.dp_attn.MLPSyncBatchInfo"
_PIECE_HOOKS = (*(("radix_cache.RadixCache", n, p) for n, p in (("evictable_size", ""),
                  ("evict", "params"), ("reset", ""))),
                *(("unified_radix_cache.UnifiedRadixCache", n, p) for n, p in (("evictable_size",
                  ""), ("full_evictable_size", ""), ("_evict", "params available_size_targets"),
                  ("reset", ""))))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Hook:
    target: str  # dotted path, as HookRegistry resolves it
    kind: str  # HookType name: BEFORE | AFTER | AROUND | REPLACE
    params: tuple[str, ...]  # the target's parameter names, in order
    hook: str  # "module:function" of ours
    where: str = "any"  # "any" process that loads plugins | "launcher" only
    when: str = "dcp"  # "always" | "dcp" (planner on) | "shard" (KV may span ranks)


HOOKS: tuple[Hook, ...] = (
    Hook(
        f"{_DPC}.__init__", "AFTER",
        ("self", "server_args", "port_args", "run_scheduler_process_func"),
        "sglang_dcp.sglang.plugin:_on_dp_controller_ready", when="always",
    ),
    # the input guard: a bad body is a 400 before it reaches a scheduler (guard.py)
    Hook(
        f"{_TM}.generate_request", "AROUND", ("self", "obj", "request"),
        "sglang_dcp.sglang.guard:around_generate_request", where="launcher", when="always",
    ),
    Hook(
        f"{_TM}._validate_one_request", "BEFORE", ("self", "obj", "input_ids"),
        "sglang_dcp.sglang.guard:before_validate_one_request", where="launcher", when="always",
    ),
    Hook(
        "sglang.srt.entrypoints.openai.serving_base.OpenAIServingBase.handle_request", "AROUND",
        ("self", "request", "raw_request"),
        "sglang_dcp.sglang.guard:around_openai_handle_request", where="launcher", when="always",
    ),
    Hook(f"{_TM}._handle_batch_output", "AROUND", ("self", "recv_obj"),
         "sglang_dcp.sglang.notices:around_handle_batch_output", where="launcher"),
    Hook(f"{_TM}._handle_abort_req", "AFTER", ("self", "recv_obj"),
         "sglang_dcp.sglang.notices:after_handle_abort_req", where="launcher"),
    # placements on the home scheduler (req.dcp), every placed request (sched_hooks.py)
    Hook(f"{_SCHED}.init_request_dispatcher", "AFTER", ("self",),
         f"{_DP}:after_init_request_dispatcher", when="dcp"),
    Hook(f"{_SCHED}.handle_generate_request", "AROUND", ("self", "recv_req", "mm_input_error"),
         f"{_DP}:around_handle_generate_request", when="dcp"),
    Hook(f"{_SCHED}._add_request_to_queue", "AFTER", ("self", "req", "is_retracted"),
         f"{_DP}:after_add_request_to_queue", when="dcp"),
    # observability: meta_info["dcp"] and the /v1/loads section (observe.py), Prometheus
    # (metrics.py)
    Hook(
        f"{_STREAMER}.build_additional_customized_info", "AROUND", ("self", "reqs"),
        "sglang_dcp.sglang.observe:around_build_additional_customized_info",
    ),
    Hook(
        f"{_TM}.update_request_meta_info", "AROUND",
        ("self", "meta_info", "state", "customized_info", "index", "finish_reason"),
        "sglang_dcp.sglang.observe:around_update_request_meta_info", where="launcher",
    ),
    Hook(
        f"{_LOADS}.get_loads", "AFTER", ("self",),
        "sglang_dcp.sglang.observe:after_get_loads",
    ),
    Hook(
        f"{_SCHED}.get_next_batch_to_run", "AFTER", ("self", "running_batch", "last_batch"),
        "sglang_dcp.sglang.metrics:after_get_next_batch_to_run",
    ),
    # the data path of requests whose KV spans ranks (sched_hooks.py, backend.py)
    Hook(
        "sglang.srt.managers.scheduler_components.dp_attn.prepare_mlp_sync_batch_raw", "AROUND",
        ("local_batch", "model_runner", "get_idle_batch", "disable_cuda_graph",
         "require_mlp_tp_gather", "disable_overlap_schedule", "offload_tags",
         "draft_require_mlp_tp_gather", "dwdp"),
        f"{_DP}:around_prepare_mlp_sync", when="shard",
    ),
    # prefill into shards: the chunk pieces ship after the forward, a failed one aborts the
    # request, a split prompt is admitted on its home's share (prefill_shards.py, admission.py)
    Hook(f"{_SCHED}.run_batch", "AFTER", ("self", "batch", "pp_proxy_tensors"),
         f"{_DP}:after_run_batch", when="shard"),
    Hook(f"{_SCHED}.process_pending_chunked_abort", "AROUND", ("self",),
         f"{_SG}.prefill_shards:around_pending_chunked_abort", when="shard"),
    Hook("sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req", "AROUND", ("self", "req",
         "has_chunked_req", "truncation_align_size"), f"{_SG}.admission:around_add_one_req",
         when="shard"),
    Hook("sglang.srt.mem_cache.base_prefix_cache.BasePrefixCache.free_kv_row", "AROUND",
         ("self", "kv", "ranges"), f"{_DP}:around_free_kv_row", when="shard"),
    Hook("sglang.srt.mem_cache.common.release_kv_cache", "AROUND",
         ("req", "tree_cache", "is_insert"), f"{_DP}:around_release_kv_cache", when="shard"),
    Hook("sglang.srt.managers.schedule_batch.Req._compute_max_prefix_len", "AROUND",
         ("self", "input_len"), f"{_RADIX}:around_compute_max_prefix_len", when="shard"),
    Hook("sglang.srt.mem_cache.common.maybe_cache_unfinished_req", "AROUND",
         ("req", "tree_cache", "kwargs"), f"{_RADIX}:around_maybe_cache_unfinished_req",
         when="shard"),
    # cached pieces of split requests: the trees' evictable memory, adopted as a prefix
    Hook("sglang.srt.managers.schedule_batch.Req.init_next_round_input", "AFTER", ("self",
         "tree_cache", "cow_mamba"), f"{_SG}.piece_adopt:after_init_next_round_input",
         when="shard"),
    *(Hook(f"sglang.srt.mem_cache.{c}.{n}", "AROUND", ("self", *p.split()),
           f"{_SG}.radix_pieces:around_{n}", when="shard") for c, n, p in _PIECE_HOOKS),
    Hook("sglang.srt.managers.scheduler_components.invariant_checker.SchedulerInvariantChecker."
         "_check_full_pool", "AROUND", ("self", "ps", "uncached"), f"{_DP}:around_check_full_pool",
         when="shard"),
    Hook(
        "sglang.srt.model_executor.model_runner_components.attention_backend_setup."
        "_build_resolved_backend", "AROUND", ("model_runner", "resolved", "init_new_workspace"),
        "sglang_dcp.sglang.backend:around_build_resolved_backend", when="shard",
    ),
    Hook("sglang.srt.layers.layer_boundary.stage.StageBoundary.finish", "AROUND", ("self",
         "hidden_states", "forward_batch"), f"{_SG}.backend:around_stage_finish", when="shard"),
    # the step header's news flag rides on SGLang's per-step MLP-sync row (header.py)
    Hook(
        f"{_MLPSYNC}._get_local_tensor", "AFTER", ("self", "device", "dtype"),
        "sglang_dcp.sglang.header:after_get_local_tensor", when="shard",
    ),
    Hook(
        f"{_MLPSYNC}._get_fallback_tensor", "AFTER", ("self", "device", "dtype"),
        "sglang_dcp.sglang.header:after_get_fallback_tensor", when="shard",
    ),
    Hook(
        f"{_MLPSYNC}.all_gather", "AFTER", ("self", "device", "group", "use_all_reduce"),
        "sglang_dcp.sglang.header:after_all_gather", when="shard",
    ),
    Hook(f"{_PREALLOC}._alloc_for_decode_prealloc", "AROUND", ("self", "allocator", "kwargs"),
         f"{_PD}:around_alloc_for_decode_prealloc", when="shard"),  # PD: KV lands in shards
    Hook(f"{_PREALLOC}._transfer_page_indices", "AROUND", ("self", "decode_req", "kv_indices",
         "page_size"), f"{_PD}:around_transfer_page_indices", when="shard"),  # fmt: skip
    Hook(f"{_PREALLOC}._check_if_req_exceed_kv_capacity", "AROUND", ("self", "req"),  # PD: home
         f"{_SG}.pd_admission:around_check_if_req_exceed_kv_capacity", when="shard"),  # share
    Hook(f"{_PREALLOC}._required_admission_tokens", "AROUND", ("self", "req", "allocated_tokens",
         "prefix_len", "retractable_tokens"),
         f"{_SG}.pd_admission:around_required_admission_tokens", when="shard"),  # fmt: skip
    Hook("sglang.srt.disaggregation.mooncake.conn.MooncakeKVManager.send_kvcache", "AROUND",
         ("self", "mooncake_session_id", "prefill_kv_indices", "dst_kv_ptrs", "dst_kv_indices",
          "executor", "dst_layer_ids", "dst_device_kv_indices", "dst_kv_item_len",
          "dst_attn_tp_size"), f"{_PD}:around_send_kvcache", when="always"),  # fmt: skip
    Hook(  # shard-move staging, charged to --mem-fraction-static (move_reserve.py)
        "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._profile_available_bytes",
        "AROUND", ("self", "pre_model_load_memory"),
        "sglang_dcp.sglang.move_reserve:around_profile_kv", when="shard",
    ),
    Hook(  # the name the decode graph runner imported (graph_variants.py:46 defines it)
        "sglang.srt.model_executor.runner.decode_cuda_graph_runner."
        "create_attention_graph_variants", "AROUND", ("hf_config",),
        "sglang_dcp.sglang.graphs:around_create_attention_graph_variants", when="shard",
    ),
)  # fmt: skip

def _is_launcher() -> bool:
    return multiprocessing.parent_process() is None


def selected(dcp_enabled: bool, launcher: bool, sharding: bool = False) -> list[Hook]:
    wanted = {"always"} | ({"dcp"} if dcp_enabled else set()) | ({"shard"} if sharding else set())
    return [h for h in HOOKS if h.when in wanted and (h.where == "any" or launcher)]


_INSTALLED: set[Hook] = set()


def assert_applied(dcp_enabled: bool, sharding: bool) -> None:
    """Fail loudly if a hook this process needs is not in place. SGLang's ``load_plugins()``
    only logs a plugin's exception and carries on; a scheduler missing a data-path hook would
    serve wrong outputs instead of stopping."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    missing = [
        h.target
        for h in selected(dcp_enabled, _is_launcher(), sharding)
        if h.target not in HookRegistry._patched
    ]
    if missing:
        raise RuntimeError(
            "sglang_dcp: these SGLang hooks are not applied in this process (see the log for "
            f"the plugin error): {', '.join(missing)}"
        )


def install(dcp_enabled: bool, *, sharding: bool = False, apply: bool = False) -> list[Hook]:
    """Check and register the hooks this process needs that are not registered yet.

    ``load_plugins()`` applies what ``register()`` registers. The launcher learns whether the
    planner is on only after parsing (it loads plugins first, so that plugin-added choices
    parse), so it calls ``install(True, apply=True)`` again for the rest.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    launcher = _is_launcher()
    chosen = [h for h in selected(dcp_enabled, launcher, sharding) if h not in _INSTALLED]
    for h in chosen:
        check(h.target, h.params)
    for h in chosen:
        HookRegistry.register(h.target, pkgutil.resolve_name(h.hook), HookType[h.kind])
        _INSTALLED.add(h)
    if apply and chosen:
        HookRegistry.apply_hooks()
    return chosen
