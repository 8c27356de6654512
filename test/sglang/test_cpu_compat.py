"""The CPU compatibility layer: stubs fail loudly, fixes are applied, hooks are installed."""

import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")


def test_sgl_kernel_stub_imports_but_fails_when_called():
    import sgl_kernel
    from sgl_kernel import merge_state_v2

    from sglang_dcp.sglang import cpu_compat

    assert cpu_compat.is_stub(sgl_kernel)
    with pytest.raises(NotImplementedError, match="merge_state_v2"):
        merge_state_v2(None, None, None, None)
    with pytest.raises(NotImplementedError, match="sgl_kernel.cpu.foo"):
        import sgl_kernel.cpu

        sgl_kernel.cpu.foo()


def test_torchvision_imports_and_nms_has_no_kernel():
    import torchvision  # would raise "operator torchvision::nms does not exist" unshimmed

    boxes = torch.rand(4, 4)
    with pytest.raises((NotImplementedError, RuntimeError)):
        torchvision.ops.nms(boxes, torch.rand(4), 0.5)


def test_hooks_active_in_a_fresh_interpreter():
    """The .pth installs the hooks at start-up, which spawned SGLang processes rely on."""
    code = "import sys; print(any(type(f).__name__ == '_CompatFinder' for f in sys.meta_path))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr


def test_apply_fixes_is_idempotent():
    from sglang_dcp.sglang import cpu_compat

    cpu_compat.apply_sglang_fixes()
    assert cpu_compat.apply_sglang_fixes() == []


def test_deepseek_fixes_where_models_run():
    """In a scheduler-like process: DeepSeek's torch_native handler takes the absorbed MLA path
    for a fresh prefill too, and the MoE routing's compiled functions run eagerly."""
    code = (
        "import types, sglang.srt.managers.scheduler\n"
        "from sglang_dcp.sglang import cpu_compat\n"
        "fixed = cpu_compat.apply_sglang_fixes()\n"
        "from sglang.srt.models.deepseek_common.attention_backend_handler import "
        "AttentionBackendRegistry as R\n"
        "import sglang.srt.layers.moe.topk as t\n"
        "print(any('absorbed MLA' in f for f in fixed), R.get_handler('torch_native')("
        "types.SimpleNamespace(), None).name, hasattr(t.biased_grouped_topk_impl, "
        "'_torchdynamo_orig_callable'), cpu_compat.apply_sglang_fixes())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "True MLA False []", out.stderr[-2000:]


def test_pd_prefill_overlap_event_is_a_cpu_event():
    """``maybe_send_cached_prefix_chunk``'s ``torch.cuda.Event()`` (a dummy class on CPU torch,
    which killed a PD prefill server at its first radix hit) records and waits on CPU; only that
    module's ``torch`` changes."""
    code = (
        "import torch, sglang.srt.managers.scheduler\n"
        "from sglang_dcp.sglang import cpu_compat\n"
        "fixed = cpu_compat.apply_sglang_fixes()\n"
        "import sglang.srt.disaggregation.prefill as p\n"
        "ev = p.torch.cuda.Event(); ev.record(torch.cpu.Stream()); ev.synchronize()\n"
        "print(any('prefill torch.cuda.Event' in f for f in fixed), ev.query(), "
        "p.torch.zeros is torch.zeros, torch.cuda.Event is not torch.cpu.Event)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "True True True True", out.stderr[-2000:]
