"""``DcpAttnBackend.forward`` in a DCP decode step: the rows it was planned for, DP-attention
padding, and the K/V store before the exchange (the exchange itself is tested in
test/distributed; here it is replaced by a recorder)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)

from sglang_dcp.sglang import backend  # noqa: E402

H, D = 4, 8


class _Pool:
    def __init__(self):
        self.stored = []

    def set_kv_buffer(self, layer, loc, k, v):
        self.stored.append((loc, k.clone(), v.clone()))


def _backend(monkeypatch, num_rows: int):
    be = object.__new__(backend.DcpAttnBackend)
    pool = _Pool()
    be.__dict__.update(inner=None, _runner=SimpleNamespace(token_to_kv_pool=pool))
    step = SimpleNamespace(active=True, num_rows=num_rows, rank=0)
    monkeypatch.setattr(backend, "current_step", lambda: step)
    calls = []

    def exchange(step_, layer_id, pool_, q, sm_scale):
        calls.append(q.clone())
        return q[: step_.num_rows].view(step_.num_rows, H, D).mul(2).reshape(step_.num_rows, H * D)

    be.__dict__["exchange"] = exchange
    return be, pool, calls


def _inputs(num_tokens: int):
    torch.manual_seed(0)
    q = torch.randn(num_tokens, H * D)
    k = torch.randn(num_tokens, 2, D)
    v = torch.randn(num_tokens, 2, D)
    layer = SimpleNamespace(
        layer_id=0, tp_q_head_num=H, qk_head_dim=D, v_head_dim=D, scaling=0.5, logit_cap=0,
        sliding_window_size=-1,
    )  # fmt: skip
    fb = SimpleNamespace(
        forward_mode=SimpleNamespace(is_decode=lambda: True, is_idle=lambda: False),
        out_cache_loc=torch.arange(num_tokens) + 7,
    )
    return q, k, v, layer, fb


def test_padded_rows_get_zeros_and_real_rows_the_exchange(monkeypatch):
    be, pool, calls = _backend(monkeypatch, num_rows=3)
    q, k, v, layer, fb = _inputs(5)  # 3 real rows + 2 rows of DP-attention padding
    out = be.forward(q, k, v, layer, fb)
    assert out.shape == (5, H * D)
    torch.testing.assert_close(out[:3], q[:3] * 2)
    assert torch.equal(out[3:], torch.zeros(2, H * D))
    assert len(calls) == 1 and len(pool.stored) == 1  # K/V stored once, before the exchange
    assert torch.equal(pool.stored[0][0].loc, fb.out_cache_loc)


def test_fewer_rows_than_planned_is_an_error(monkeypatch):
    be, _, calls = _backend(monkeypatch, num_rows=3)
    q, k, v, layer, fb = _inputs(2)
    with pytest.raises(RuntimeError, match="decodes 2 rows but its DCP step was planned for 3"):
        be.forward(q, k, v, layer, fb)
    assert not calls  # no rank may enter the exchange with a wrong route
