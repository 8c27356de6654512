"""One self-check rank on the server's runtime (``sglang/selfcheck_rank.py``): SGLang's pools,
``shipping.ship``, ``step_build.build_step`` and one ``StaticExchange``; eager on CPU with fixed
buffer addresses, CUDA graphs where GPUs are."""

import math

import pytest
import torch

from sglang_dcp.exchange.comm import LocalCommunicator
from sglang_dcp.exchange.selfcheck import TOLERANCE, CheckConfig, reference_errors, run_rank


def _single_rank(cfg: CheckConfig, tmp_path) -> dict:
    run_rank(0, cfg, LocalCommunicator(), str(tmp_path))
    return torch.load(tmp_path / "rank0.pt")["results"]


@pytest.mark.parametrize("mla, paged", [(False, False), (True, True)])
def test_single_rank_eager_matches_reference(tmp_path, mla, paged):
    make = CheckConfig.for_mla if mla else CheckConfig
    cfg = make(1, 5, 0, num_layers=2, impl="torch", paged=paged)
    err, where = reference_errors(cfg, _single_rank(cfg, tmp_path))
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"


def test_buffers_keep_their_addresses(tmp_path, monkeypatch):
    """Nothing a captured graph would read is reallocated between steps: the rank checks the
    exchange buffers, its row map and SGLang's KV buffers after every step and raises if any
    moved; a buffer that moves is caught."""
    from sglang_dcp.sglang import selfcheck_rank

    cfg = CheckConfig(1, 4, 0, num_layers=2, impl="torch")
    _single_rank(cfg, tmp_path)  # the addresses held: no error
    real = selfcheck_rank._decode

    def decode_then_move(*a, **kw):
        out = real(*a, **kw)
        kw["ex"].bufs.kv_indptr = kw["ex"].bufs.kv_indptr.clone()
        return out

    monkeypatch.setattr(selfcheck_rank, "_decode", decode_then_move)
    with pytest.raises(RuntimeError, match="static exchange buffers moved"):
        _single_rank(cfg, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL ranks need one GPU each")
def test_cuda_graph_matches_eager():
    from sglang_dcp.exchange.selfcheck import collect_results

    base = dict(num_layers=2, device="cuda", backend="nccl")
    eager, _ = collect_results(CheckConfig(2, 6, 0, **base))
    graph, _ = collect_results(CheckConfig(2, 6, 0, cuda_graph=True, **base))
    assert eager.keys() == graph.keys()
    for k in eager:
        torch.testing.assert_close(graph[k], eager[k])
    err, where = reference_errors(CheckConfig(2, 6, 0, **base), graph)
    assert err <= TOLERANCE and not math.isnan(err), where


def test_host_staged_communicator_moves_the_same_values():
    """The wrapper used when gloo ranks share a GPU: values arrive unchanged and in place."""
    from sglang_dcp.exchange.comm import HostStagedCommunicator

    comm = HostStagedCommunicator(LocalCommunicator())
    inp = torch.randn(6, 3, dtype=torch.float64)
    out = torch.full_like(inp, math.nan)
    ptr = out.data_ptr()
    comm.all_to_all_single(out, inp)
    assert out.data_ptr() == ptr and torch.equal(out, inp)
    out.fill_(math.nan)
    comm.all_gather(out, inp)
    assert torch.equal(out, inp) and (comm.rank, comm.world_size) == (0, 1)
