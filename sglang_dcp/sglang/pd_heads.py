"""CPU fix for PD disaggregation: pad attention heads to the attention TP size, not the TP size.

Upstream symptom (SGLang 0.5.21, CPU only): a PD decode server with DP attention and 4 ranks
(``--tp-size 4 --dp-size 4 --enable-dp-attention``) returns a wrong second token for every
request; the first one, sampled by the prefill server, is right. ``ModelRunner.load_model``
calls ``configs/update_config.py`` ``adjust_config_with_unaligned_cpu_tp(model_config,
load_config, self.tp_size)`` on CPU, which pads the KV heads to a multiple of ``tp_size``: the
tiny model's 2 KV heads become 4 on the decode ranks (``kv_item_lens`` 256 bytes per token and
layer) while the 1-rank prefill server keeps 2 (128 bytes). With DP attention the attention is
sharded over ``attn_tp_size`` ranks (here 1), so the padding is not needed; and mooncake's
``_send_kvcache_generic`` places every page at ``index * prefill_item_len`` in the decode pool,
so the prompt's KV lands at the wrong offsets and the decode reads zeros. With 2 decode ranks
the 2 heads divide evenly and nothing is padded, which is why 2 ranks worked.

The fix, only in PD servers (``--disaggregation-mode prefill|decode``, where both sides' per-token
KV layouts must agree): during that call, the head padding size is computed from the attention
TP size (``runtime_context.get_parallel().attn_tp_size``); everything else in it (MoE intermediate sizes, linear
attention heads) still pads to ``tp_size``. Colocated servers keep SGLang's padding unchanged.
"""

from __future__ import annotations

import functools

_MARK = "_sglang_dcp_attention_tp_heads"


def _pad_heads_to_attention_tp(orig):
    @functools.wraps(orig)
    def adjust(model_config, load_config, tp_size: int):
        import sglang.srt.configs.update_config as uc
        from sglang.srt.runtime_context import get_disagg, get_parallel

        attn_tp = get_parallel().attn_tp_size
        if attn_tp == tp_size or get_disagg().disaggregation_mode == "null":
            return orig(model_config, load_config, tp_size)
        by_tp = uc.get_num_heads_padding_size

        def by_attention_tp(size, weight_block_size, head_dim=None):
            return by_tp(attn_tp if size == tp_size else size, weight_block_size, head_dim)

        uc.get_num_heads_padding_size = by_attention_tp
        try:
            return orig(model_config, load_config, tp_size)
        finally:
            uc.get_num_heads_padding_size = by_tp

    setattr(adjust, _MARK, True)
    return adjust


def pad_heads_to_attention_tp_in_pd() -> list[str]:
    """Wrap the call in this (scheduler) process; the wrapper acts only in PD servers (it reads
    the server args when the model loads). Returns the names of what changed."""
    import sglang.srt.model_executor.model_runner as mr

    fn = mr.adjust_config_with_unaligned_cpu_tp
    if getattr(fn, _MARK, False):
        return []
    mr.adjust_config_with_unaligned_cpu_tp = _pad_heads_to_attention_tp(fn)
    return ["model_runner.adjust_config_with_unaligned_cpu_tp (PD: heads by attention TP)"]
