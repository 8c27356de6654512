"""Bad input raises a ValueError naming the argument, before any kernel launch (an out-of-bounds
launch under the interpreter would crash the whole test process instead)."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import make_decode_inputs

from sglang_dcp.kernels import decode_attention, merge_attention_states


def _good():
    q, k, v, indptr, indices = make_decode_inputs(
        seed=0, lens=[3, 5], num_heads=8, num_kv_heads=2, head_dim=64, head_dim_v=64,
        dtype=torch.float16, device=torch.device("cpu"),  # the checks run before any dispatch
    )
    return dict(q=q, k_buffer=k, v_buffer=v, kv_indptr=indptr, kv_indices=indices, sm_scale=0.125)


def _set(**changes):
    def apply(a):
        a = dict(a)
        for key, fn in changes.items():
            a[key] = fn(a)
        return a

    return apply


META = torch.device("meta")
DECODE_BAD = [
    ("q", _set(q=lambda a: a["q"][0])),  # 2-D
    ("q", _set(q=lambda a: a["q"].to(torch.int32))),
    ("k_buffer", _set(k_buffer=lambda a: a["k_buffer"].float())),  # dtype != q
    ("k_buffer", _set(k_buffer=lambda a: a["k_buffer"][..., :32].contiguous())),  # head_dim
    ("k_buffer", _set(k_buffer=lambda a: torch.zeros(53, 3, 64, dtype=torch.float16),
                      v_buffer=lambda a: torch.zeros(53, 3, 64, dtype=torch.float16))),  # 8 % 3
    ("v_buffer", _set(v_buffer=lambda a: a["v_buffer"][:10])),  # num_slots
    ("v_buffer", _set(v_buffer=lambda a: a["v_buffer"].to(torch.bfloat16))),
    ("v_buffer", _set(v_buffer=lambda a: a["v_buffer"].to(META))),  # device
    ("k_buffer", _set(k_buffer=lambda a: a["k_buffer"].transpose(1, 2).contiguous().transpose(1, 2))),
    ("kv_indptr", _set(kv_indptr=lambda a: a["kv_indptr"][:2])),  # length
    ("kv_indptr", _set(kv_indptr=lambda a: a["kv_indptr"].float())),
    ("kv_indptr", _set(kv_indptr=lambda a: torch.tensor([0, 5, 3], dtype=torch.int32))),
    ("kv_indptr", _set(kv_indptr=lambda a: torch.tensor([-1, 3, 8], dtype=torch.int32))),
    ("kv_indptr", _set(kv_indptr=lambda a: torch.tensor([0, 3, 9], dtype=torch.int32))),  # > nnz
    ("kv_indices", _set(kv_indices=lambda a: a["kv_indices"] + 1000)),  # slot out of range
    ("kv_indices", _set(kv_indices=lambda a: a["kv_indices"] - 1000)),
    ("kv_indices", _set(kv_indices=lambda a: a["kv_indices"].view(2, 4))),
    ("sm_scale", _set(sm_scale=lambda a: float("nan"))),
    ("sm_scale", _set(sm_scale=lambda a: "0.1")),
]


@pytest.mark.parametrize("arg,mutate", DECODE_BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(DECODE_BAD)])
def test_decode_rejects(arg, mutate):
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        decode_attention(**mutate(_good()))


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(num_kv_splits=0), "num_kv_splits"),
        (dict(num_kv_splits=2.5), "num_kv_splits"),
        (dict(k_scale=torch.ones(2)), "k_scale"),
        (dict(v_scale=float("inf")), "v_scale"),
        (dict(impl="cuda"), "impl"),
    ],
)
def test_decode_rejects_options(kwargs, arg):
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        decode_attention(**_good(), **kwargs)


def _good_merge():
    o = torch.randn(6, 4, 32)
    lse = torch.randn(6, 4)
    seg = torch.tensor([0, 2, 6], dtype=torch.int32)
    return dict(o_parts=o, lse_parts=lse, seg_indptr=seg)


MERGE_BAD = [
    ("o_parts", _set(o_parts=lambda a: a["o_parts"][0])),
    ("lse_parts", _set(lse_parts=lambda a: a["lse_parts"].double())),
    ("lse_parts", _set(lse_parts=lambda a: a["lse_parts"][:5])),
    ("seg_indptr", _set(seg_indptr=lambda a: torch.tensor([0, 4, 2], dtype=torch.int32))),
    ("seg_indptr", _set(seg_indptr=lambda a: torch.tensor([0, 7], dtype=torch.int32))),
    ("seg_indptr", _set(seg_indptr=lambda a: torch.tensor([], dtype=torch.int32))),
    ("seg_indptr", _set(seg_indptr=lambda a: a["seg_indptr"].to(META))),
    ("o_parts", _set(o_parts=lambda a: a["o_parts"].transpose(1, 2).contiguous().transpose(1, 2))),
]


@pytest.mark.parametrize("arg,mutate", MERGE_BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(MERGE_BAD)])
def test_merge_rejects(arg, mutate):
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        merge_attention_states(**mutate(_good_merge()))
