"""The static-graph runner: eager on CPU with fixed buffer addresses; CUDA graphs where a GPU is."""

import math

import pytest
import torch

from sglang_dcp.exchange.comm import LocalCommunicator
from sglang_dcp.exchange.kv_pool import KVPool
from sglang_dcp.exchange.exchange import default_kernels
from sglang_dcp.exchange.selfcheck import (
    TOLERANCE,
    CheckConfig,
    ToyStack,
    Weights,
    reference_errors,
    run_rank,
)
from sglang_dcp.runner.graph import Bucket, DecodeRunner, capture_buckets, pick_bucket
from sglang_dcp.types import Placement, Shard


def _single_rank(cfg: CheckConfig, tmp_path) -> dict:
    run_rank(0, cfg, LocalCommunicator(), str(tmp_path))
    return torch.load(tmp_path / "rank0.pt")["results"]


def test_single_rank_eager_matches_reference(tmp_path):
    cfg = CheckConfig(1, 5, 0, num_layers=2, impl="torch")
    err, where = reference_errors(cfg, _single_rank(cfg, tmp_path))
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"


def test_buffers_keep_their_addresses():
    cfg = CheckConfig(1, 1, 0, num_layers=2, impl="torch")
    pool = KVPool(num_layers=2, num_pages=64, page_size=4, num_kv_heads=2, head_dim=16)
    runner = DecodeRunner(
        comm=LocalCommunicator(), pool=pool, model=ToyStack(Weights(cfg), pool), num_q_heads=4,
        head_dim=16, v_head_dim=16, sm_scale=0.25, buckets=capture_buckets(4, 2),
        kernels=default_kernels("torch"),
    )

    def ptrs():
        out = {("pool", "k"): pool.k.data_ptr(), ("pool", "v"): pool.v.data_ptr()}
        for b, bufs in runner.buffers.items():
            out.update({(b, k): v for k, v in bufs.data_ptrs().items()})
            out.update({(b, "io", k): v.data_ptr() for k, v in runner.io[b].items()})
        return out

    before = ptrs()
    assert len(before) > 40
    for step, batch in enumerate([1, 3, 2, 4, 4, 1, 0]):
        ps = []
        for i in range(batch):
            rid = f"s{step}r{i}"
            pool.allocate((rid, 0), 5 + i)
            ps.append(Placement(rid, 0, (Shard(0, 0, 6 + i),)))
        loc = [pool.extend((p.rid, 0))[0] for p in ps]
        x, loc = torch.randn(batch, cfg.hidden), torch.tensor(loc, dtype=torch.long)
        io = runner.step(ps, {"x": x, "loc": loc})
        assert io["attn"].shape == (batch, 2, 4, 16) and torch.isfinite(io["attn"]).all()
        for p in ps:
            pool.free_request(p.rid)
    assert ptrs() == before  # nothing a graph would read was reallocated


def test_pick_bucket():
    bs = capture_buckets(8, 4)
    assert bs[0] == Bucket(8, 4) and bs[-1] == Bucket(1, 1) and len(bs) == 12
    assert pick_bucket(bs, 3, 2) == (Bucket(4, 2), 1)
    assert pick_bucket(bs, 0, 0) == (Bucket(1, 1), 1)
    assert pick_bucket(bs, 8, 9) == (Bucket(8, 4), 3)  # past the largest capacity: rounds
    assert pick_bucket(bs, 11, 1) == (Bucket(11, 1), 1)  # past the largest batch: one-off


@pytest.mark.gpu
def test_cuda_graph_matches_eager(tmp_path):
    base = dict(num_layers=2, device="cuda")
    eager = _single_rank(CheckConfig(1, 6, 0, **base), tmp_path)
    graph = _single_rank(CheckConfig(1, 6, 0, cuda_graph=True, **base), tmp_path)
    assert eager.keys() == graph.keys()
    for k in eager:
        torch.testing.assert_close(graph[k], eager[k])
    err, where = reference_errors(CheckConfig(1, 6, 0, **base), graph)
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
