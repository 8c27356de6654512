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


def test_the_cpu_paged_allocator_matches_sglang_s_triton_kernels():
    """``cpu_paged``: SGLang's ``alloc_extend`` / ``alloc_decode`` at page size 16 give the same
    slots through the torch fallback as through its Triton kernels (the interpreter here)."""
    import torch
    from sglang.kernels.ops.memory import allocator as kernels  # SGLang's Triton kernels
    from sglang.srt.mem_cache.allocator import paged

    from sglang_dcp.sglang import cpu_paged

    def run(extend_kernel, decode_kernel, free_pages):
        a = paged.PagedTokenToKVPoolAllocator(64 * 16, 16, torch.float32, "cpu", None, False)
        a.free_pages = free_pages.clone()
        saved = paged.alloc_extend_kernel, paged.alloc_decode_kernel
        paged.alloc_extend_kernel, paged.alloc_decode_kernel = extend_kernel, decode_kernel
        try:
            pre, seq = torch.tensor([0, 5, 16]), torch.tensor([40, 21, 17])
            last = torch.tensor([-1, 3 * 16 + 4, 9 * 16 + 15])
            ext = a.alloc_extend(pre, pre, seq, seq, last, int((seq - pre).sum()))
            dseq, dlast = torch.tensor([33, 18, 7]), torch.tensor([ext[39], ext[55], 100])
            return ext.tolist(), a.alloc_decode(dseq, dseq, dlast).tolist()
        finally:
            paged.alloc_extend_kernel, paged.alloc_decode_kernel = saved

    free = torch.randperm(63)[:40] + 1
    want = run(kernels.alloc_extend_kernel, kernels.alloc_decode_kernel, free)
    got = run(cpu_paged._Launch(cpu_paged._alloc_extend),
              cpu_paged._Launch(cpu_paged._alloc_decode), free)  # fmt: skip
    assert got == want
