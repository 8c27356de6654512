"""Import smoke of the SGLang 0.5.21 modules sglang-dcp touches (on CPU through cpu_compat)."""

import importlib

import pytest

MODULES = [
    "sglang",
    "sglang.launch_server",
    "sglang.srt.server_args",
    "sglang.srt.plugins",
    "sglang.srt.plugins.hook_registry",
    "sglang.srt.managers.data_parallel_controller",
    "sglang.srt.managers.scheduler",
    "sglang.srt.managers.io_struct",
    "sglang.srt.managers.scheduler_components.dp_attn",
    "sglang.srt.layers.dp_attention",
    "sglang.srt.layers.attention.attention_registry",
    "sglang.srt.layers.attention.triton_backend",
    "sglang.srt.layers.attention.torch_native_backend",
    "sglang.srt.layers.dcp",
    "sglang.kernels.ops.attention.decode_attention",
    "sglang.kernels.ops.attention.merge_state",
    "sglang.srt.model_executor.model_runner",
    "sglang.srt.model_executor.runner.decode_cuda_graph_runner",
    "sglang.srt.layers.moe.ep_moe.layer",
    "sglang.srt.layers.moe.token_dispatcher.deepep",
    "sglang.srt.entrypoints.http_server",
    "sglang.srt.entrypoints.engine",
]


@pytest.mark.parametrize("name", MODULES)
def test_import(name):
    importlib.import_module(name)


def test_pinned_versions():
    import sglang
    import torch
    import triton

    assert sglang.__version__ == "0.5.21"
    assert torch.__version__.split("+")[0] == "2.13.0"
    assert triton.__version__ == "3.7.1"


def test_plugin_entry_point_registered():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert eps.get("sglang_dcp") == "sglang_dcp.sglang.plugin:register"


def test_plugin_loads_through_sglang():
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    import torch

    if not torch.cuda.is_available():
        assert TorchNativeAttnBackend.get_cpu_graph_seq_len_fill_value(None) == 1
