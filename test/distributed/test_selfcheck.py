"""The exchange self-check on 2-4 local gloo ranks against the float64 single-process reference,
on the server's runtime over SGLang's own pools (MHA and MLA pools, paged and unpaged
allocators; ``--pool sglang``)."""

import math

import pytest
import torch

from sglang_dcp.exchange.selfcheck import TOLERANCE, CheckConfig, collect_results, reference_errors

SMALL = dict(num_layers=2, impl="torch")


@pytest.mark.parametrize(
    "world_size, seed, steps, capacity, paged",
    [
        (3, 1, 6, 0, False),
        (4, 2, 6, 0, True),
        (3, 3, 6, 1, True),  # capacity 1: steps run in several rounds
        (4, 4, 4, 1, False),
    ],
)
def test_selfcheck(world_size, seed, steps, capacity, paged):
    cfg = CheckConfig(world_size, steps, seed, capacity=capacity, paged=paged, **SMALL)
    results, stats = collect_results(cfg, timeout_s=120)
    err, where = reference_errors(cfg, results)
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"
    assert stats["moves"] > 0 and stats["guest_items"] > 0
    if capacity == 1:
        assert stats["max_rounds"] > 1


@pytest.mark.parametrize("world_size, seed, capacity, paged", [(3, 1, 0, True), (4, 4, 1, False)])
def test_selfcheck_mla(world_size, seed, capacity, paged):
    """SGLang's ``MLATokenToKVPool`` and absorbed MLA shapes: one latent KV head, V a view of its
    first columns, latent partials merged at home (``--attention mla``)."""
    cfg = CheckConfig.for_mla(world_size, 5, seed, capacity=capacity, paged=paged, **SMALL)
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.v_head_dim) == (1, 48, 32)
    results, stats = collect_results(cfg, timeout_s=120)
    err, where = reference_errors(cfg, results)
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"
    assert stats["moves"] > 0 and stats["guest_items"] > 0
    assert next(iter(results.values())).shape == (2, 4, 32)  # [layers, H, kv_lora_rank]


def test_selfcheck_mla_triton_interpreter():
    """MLA through the Triton kernels (interpreted): K tiles reused as V (V_FROM_K)."""
    from sglang_dcp.kernels.tiling import decode_config
    from sglang_dcp.sglang.selfcheck_rank import layer_kv, make_pools

    cfg = CheckConfig.for_mla(2, 2, 5, num_layers=1, impl="triton", max_pages=2)
    kv, _ = make_pools(cfg, 16, "cpu")
    assert decode_config(torch.zeros(1, 4, 48), *layer_kv(kv, cfg, 0)).v_from_k
    results, _ = collect_results(cfg, timeout_s=240)
    err, where = reference_errors(cfg, results)
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"


def test_selfcheck_reports_divergence():
    cfg = CheckConfig(2, 5, 0, **SMALL)
    results, _ = collect_results(cfg, timeout_s=120)
    assert reference_errors(cfg, results)[0] <= TOLERANCE
    key = sorted(results)[len(results) // 2]
    bad = dict(results)
    bad[key] = results[key].clone()
    bad[key][1, 0, 0] += 1.0
    err, where = reference_errors(cfg, bad)
    assert err > TOLERANCE and f"step {key[0]} layer 1 request {key[1]}" in where, where
    del bad[key]
    err, where = reference_errors(cfg, bad)
    assert math.isinf(err) and f"no output for {key[1]}" in where


def test_selfcheck_triton_interpreter():
    """The same exchange through the Triton kernels (interpreted on CPU)."""
    cfg = CheckConfig(2, 2, 5, num_layers=1, impl="triton", max_pages=2)
    results, _ = collect_results(cfg, timeout_s=240)
    err, where = reference_errors(cfg, results)
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"


@pytest.mark.parametrize("extra", [[], ["--pool", "sglang", "--attention", "mla", "--paged"]])
def test_selfcheck_cli_prints_error_last_and_exits_zero(extra):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "sglang_dcp.exchange.selfcheck",
         "--world-size", "2", "--steps", "3", "--seed", "11", "--layers", "1", *extra],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("max_rel_err=") and float(last.split("=")[1]) <= TOLERANCE
    assert "pool=sglang" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cuda-graph"], "--cuda-graph needs --backend nccl"),
        (["--backend", "nccl", "--device", "cpu"], "--backend nccl needs --device cuda"),
    ],
)
def test_selfcheck_cli_refuses_bad_combinations(args, message, capsys):
    from sglang_dcp.exchange.selfcheck import main

    with pytest.raises(SystemExit) as e:
        main(["--world-size", "2", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("world_size, capacity", [(2, 0), (4, 0), (3, 1)])
def test_selfcheck_ranks_sharing_one_gpu(world_size, capacity):
    """Several gloo ranks on one GPU: KV, buffers and the Triton kernels on CUDA, the
    all-to-alls through host copies (HostStagedCommunicator)."""
    cfg = CheckConfig(world_size, 5, 7, capacity=capacity, num_layers=2, impl="triton",
                      device="cuda")  # fmt: skip
    results, stats = collect_results(cfg, timeout_s=240)
    err, where = reference_errors(cfg, results)
    assert err <= TOLERANCE, f"max_rel_err={err:.3e} at {where}"
    assert stats["moves"] > 0 and stats["guest_items"] > 0
