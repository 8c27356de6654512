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
