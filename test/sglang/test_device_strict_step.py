"""The decode step path as a GPU sees it, on CPU (issue 23, item 6, step part): the header's news,
the step build (full and predicted), the route load into the static exchange and the metadata
call, run under ``DeviceGuard`` with every tensor a GPU would hold marked as on the device.
A host sync (``split.cpu()`` before) or a host tensor meeting a device one raises."""

from __future__ import annotations

import pytest

from sglang_dcp.sglang import context
from sglang_dcp.sglang.step import RankNews, plan_step
from sglang_dcp.testing.device_guard import DeviceGuard, DeviceMixError, HostSyncError
from sglang_dcp.testing.step_rank import make_rank


@pytest.fixture
def step_state(monkeypatch):
    state = {"step": None}
    monkeypatch.setattr(context, "current_step", lambda: state["step"])
    return state


def _one_step(k, state, *, predicted: bool):
    rt = k.rt
    for req in rt.split_reqs.values():  # SGLang plans the decode batch
        req.decode_batch_idx += 1
    news, _ = rt.news(k.batch, None)
    plan = plan_step([news, RankNews(decoding=k.peers), RankNews(), RankNews()], [])
    step = rt.step_for(plan, predicted=predicted, decoded=[True] * rt.num_ranks)
    k.be.load(step)
    state["step"] = step
    view = k.be._prepare(k.fb)
    return step, view


@pytest.mark.parametrize("split", [1, 5])
def test_decode_steps_never_sync_with_the_host_nor_mix_devices(step_state, split):
    k = make_rank(32, split)
    with DeviceGuard(max_syncs=0) as guard:
        guard.mark(*k.device_tensors)
        first, view = _one_step(k, step_state, predicted=False)
        assert first.reuses_route is None and first.num_rows == split
        for _ in range(3):  # the header predicted these: the route is reused, tails grow
            step, view = _one_step(k, step_state, predicted=True)
            assert step.reuses_route is not None
        assert guard.on_device(k.be.ex.row_slot) and guard.on_device(view.seq_lens)
        assert not guard.on_device(view.seq_lens_cpu)
    assert guard.syncs == []
    # the inner backend's host and device views agree: split rows at length 1
    assert view.seq_lens_cpu.tolist() == view.seq_lens.tolist()
    assert view.seq_lens_cpu[:split].tolist() == [1] * split
    assert view.seq_lens_sum == int(view.seq_lens_cpu.sum())


def test_the_guard_sees_what_a_gpu_would_refuse():
    """The guard itself: a ``.cpu()`` of a device tensor and a host index into a device table
    raise (the two faults this test exists for)."""
    k = make_rank(8, 1)
    import torch

    with DeviceGuard(max_syncs=0) as guard:
        guard.mark(*k.device_tensors)
        with pytest.raises(HostSyncError):
            k.fb.seq_lens.cpu()
        with pytest.raises(DeviceMixError):
            k.fb.seq_lens.index_select(0, torch.tensor([0, 1]))
