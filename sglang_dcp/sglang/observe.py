"""What a DCP server tells its clients: ``meta_info["dcp"]`` and the ``/v1/loads`` ``dcp`` section.

``meta_info["dcp"]`` is ``types.Placement.to_json()`` of the request's ranges as they are when
the output is built (``home_rank``, ``degree``, ``shard_ranks``, ``shards``: shipped shards where
they went, a failed move's range on the home, the tail up to the KV held; ``ledger.py``), on
every generate response, streamed chunks included, of a request the planner placed; requests SGLang dispatched on its own get no key. How it travels (SGLang
0.5.21, no text patch):

1. home scheduler: ``SchedulerOutputStreamer`` (managers/scheduler_components/output_streamer.py)
   asks ``build_additional_customized_info(reqs)`` (l.218) for per-request values once its
   ClassVar ``has_additional_customized_info`` (l.52) is set (``enable_output_info``);
   ``around_build_additional_customized_info`` adds ``{"dcp": [placement json or None, ...]}``,
   only when some request of the batch has one, so other batches carry nothing extra;
2. ``BatchTokenIDOutput.customized_info`` (pickled, l.742) -> detokenizer (copied as is,
   detokenizer_manager.py:501) -> ``BatchStrOutput`` -> tokenizer manager;
3. ``TokenizerManager.update_request_meta_info`` (tokenizer_manager.py:2666) would append each
   value to a per-request list accumulated over the stream (l.2663); the AROUND hook takes
   ``"dcp"`` out first and sets ``meta_info["dcp"]`` to this request's value. ``meta_info`` is
   built afresh for every output (l.2372), and every output of a placed request carries its
   value, so each streamed chunk and the final response have it.

Not with SGLang's Rust egress (``SGLANG_RUST_SERVER``): ``SchedulerOutputStreamer.__post_init__``
(l.67) refuses the opt-in there; the launcher refuses the combination first (launch.py).

``/v1/loads``: patches/0002 gives ``LoadSnapshot`` an optional ``dcp`` dict; the AFTER hook on
``SchedulerLoadInquirer.get_loads`` (load_inquirer.py:95) fills it from ``context.stats()``
(with the planner's books for the rank, ``planner_kv_tokens`` and ``planner_guest_kv_tokens``)
and the rank's own KV count ``kv_tokens`` (SGLang's ``num_used_tokens``: its allocator's slots
in use, guest shards included).
"""

from __future__ import annotations

from sglang_dcp.sglang.ledger import current_placement
from sglang_dcp.sglang.context import stats
from sglang_dcp.sglang.rank_stats import RankStats

KEY = "dcp"  # the meta_info key, the customized_info key and the /v1/loads section


class PatchMissingError(RuntimeError):
    pass


def enable_output_info() -> None:
    """Opt SGLang's output streamer in to ``build_additional_customized_info`` (this process)."""
    from sglang.srt.managers.scheduler_components.output_streamer import (
        SchedulerOutputStreamer,
    )

    assert hasattr(SchedulerOutputStreamer, "has_additional_customized_info")
    SchedulerOutputStreamer.has_additional_customized_info = True


def require_load_snapshot_section() -> None:
    """Fail at startup, not in the load publisher (which only logs), without patches/0002."""
    from sglang.srt.managers.load_snapshot import LoadSnapshot

    if KEY not in LoadSnapshot.__struct_fields__:
        raise PatchMissingError(
            "the installed SGLang LoadSnapshot has no 'dcp' section: it is not the wheel "
            "rebuilt with patches/ (run `make patch`, see patches/README.md)"
        )


def placement_values(reqs) -> list | None:
    """One ``Placement.to_json()`` of the request's ranges as they are now
    (``ledger.current_placement``) or None per request; None when no request has a placement."""
    values = [p.to_json() if (p := current_placement(r)) is not None else None for r in reqs]
    return values if any(v is not None for v in values) else None


def around_build_additional_customized_info(original, self, reqs, *args, **kwargs):
    info = original(self, reqs, *args, **kwargs)
    values = placement_values(reqs)
    if values is not None:
        info = {**info, KEY: values}
    return info


def around_update_request_meta_info(
    original, self, meta_info, state, customized_info, index, finish_reason, *args, **kwargs
):
    if KEY in customized_info:
        customized_info = dict(customized_info)
        value = customized_info.pop(KEY)[index]
        if value is not None:
            meta_info[KEY] = value
    return original(self, meta_info, state, customized_info, index, finish_reason, *args, **kwargs)


def loads_section(s: RankStats) -> dict[str, int | float]:
    """The ``/v1/loads`` ``dcp`` section: every number of ``s`` but the rank and the histogram."""
    d = s.to_json()
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and k != "dp_rank"}


def after_get_loads(result, self, *args, **kwargs):
    # the rank's own KV count next to the planner's (``planner_kv_tokens``, ledger.py)
    result.dcp = {**loads_section(stats()), "kv_tokens": result.num_used_tokens}
    return result
