"""``--dcp-*`` flags: parsing, one-line errors on bad combinations, the environment channel."""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)

from sglang_dcp import env  # noqa: E402
from sglang_dcp.sglang import launch  # noqa: E402
from sglang_dcp.sglang.options import DcpOptions, OptionsError, resolve  # noqa: E402

SERVE = ["--model-path", "m", "--tp-size", "2", "--dp-size", "2", "--enable-dp-attention"]


@pytest.fixture(scope="module")
def parser():
    return launch.build_parser()


def options(parser, *extra):
    argv = SERVE + list(extra)
    ns = parser.parse_args(argv)
    ns.load_balance_method_given = "--load-balance-method" in argv
    return launch.dcp_options(ns)


def test_default_is_the_dcp_planner_sharding_with_the_radix_cache_on(parser):
    # issue 26: the radix cache no longer blocks sharding, and is not forced off
    assert options(parser) == DcpOptions(policy="dcp", max_degree=2)
    assert options(parser).sharding
    o = options(parser, "--dcp-max-degree", "2")
    assert o.sharding and o.max_degree == 2


def test_degree_defaults_to_dp_size_when_the_server_can_shard(parser):
    o = options(parser, "--disable-radix-cache")  # still accepted
    assert o == DcpOptions(policy="dcp", max_degree=2) and o.sharding
    o = options(parser, "--disable-radix-cache", "--dcp-kv-capacity", "512")
    assert o.kv_capacity == 512
    o = options(parser, "--disable-radix-cache", "--attention-backend", "torch_native")
    assert o.sharding
    assert o.queue_max_bypass == 16
    assert options(parser, "--dcp-queue-max-bypass", "0").queue_max_bypass == 0
    # an unsupported backend keeps the default at 1 instead of failing
    assert options(parser, "--disable-radix-cache", "--attention-backend", "wave").max_degree == 1
    assert options(parser, "--disable-radix-cache", "--attention-backend", "dsa").max_degree == 1
    # any dense backend keeps serving unsplit rows: sharding stays on
    for b in ("flex_attention", "fa3", "flashinfer", "flashmla", "trtllm_mla"):
        assert options(parser, "--disable-radix-cache", "--attention-backend", b).sharding, b
    assert not options(parser, "--disable-radix-cache", "--dcp-policy", "round_robin").sharding


def test_launcher_keeps_the_users_backend_and_leaves_overlap_on():
    o = DcpOptions(policy="dcp", max_degree=2)
    assert launch.sharding_argv(["--x"], o, cuda=False) == [
        "--x", "--attention-backend", "torch_native"]
    # a user may still turn overlap scheduling off
    assert launch.sharding_argv(["--disable-overlap-schedule"], o, cuda=False) == [
        "--disable-overlap-schedule", "--attention-backend", "torch_native"]
    # on GPU the user's backend (or SGLang's default) stays: no --attention-backend added
    assert launch.sharding_argv(["--x"], o, cuda=True) == [
        "--x", "--cuda-graph-backend-prefill", "disabled"]
    assert launch.sharding_argv(["--attention-backend", "fa3"], o, cuda=True)[:2] == [
        "--attention-backend", "fa3"]
    # decode CUDA graphs stay on (plain + dcp variants); prefill graphs off
    assert launch.sharding_argv(["--attention-backend", "triton"], o, cuda=True) == [
        "--attention-backend", "triton", "--cuda-graph-backend-prefill", "disabled"]
    assert "--cuda-graph-backend-prefill" not in launch.sharding_argv(
        ["--disable-cuda-graph"], o, cuda=True)
    assert launch.sharding_argv(["--x"], DcpOptions(policy="dcp"), cuda=False) == ["--x"]


def test_launcher_refuses_graphs_that_would_skip_the_exchange(monkeypatch):
    o = DcpOptions(policy="dcp", max_degree=2)
    with pytest.raises(launch.LaunchError, match="--cuda-graph-backend-prefill breakable"):
        launch.sharding_argv(["--cuda-graph-backend-prefill", "breakable"], o, cuda=True)
    assert launch.sharding_argv(["--cuda-graph-backend-prefill=disabled"], o, cuda=True) == [
        "--cuda-graph-backend-prefill=disabled"]
    monkeypatch.setenv("SGLANG_ENABLE_METADATA_GLUE_GRAPH", "1")
    with pytest.raises(launch.LaunchError, match="SGLANG_ENABLE_METADATA_GLUE_GRAPH"):
        launch.sharding_argv([], o, cuda=True)
    assert launch.sharding_argv([], DcpOptions(policy="dcp"), cuda=True) == []


def test_flags_reach_the_options(parser):
    o = options(parser, "--dcp-policy", "dcp", "--dcp-cost-profile", "deepseek-v3-h200",
                "--dcp-max-degree", "1", "--dcp-min-shard-tokens", "512")  # fmt: skip
    assert o == DcpOptions("dcp", "deepseek-v3-h200", 1, 512)
    assert o.policy_options() == {"max_degree": 1, "min_shard_tokens": 512,
                                  "step_slo_ms": None, "split_rule": "fit",
                                  "split_cost_k": 4.0, "rebalance_threshold": None, "prefill_chunk": None,
                                  "wire_capacity": o.max_guest_items}
    r = options(parser, "--disable-radix-cache", "--dcp-rebalance-threshold", "1.25")
    assert r.sharding and r.policy_options()["rebalance_threshold"] == 1.25
    b = options(parser, "--dcp-slo-tpot-ms", "35", "--dcp-split-rule", "auto")
    assert b.policy_options()["step_slo_ms"] == 35.0 and b.split_rule == "auto"
    assert DcpOptions.from_json(b.to_json()) == b
    k = options(parser, "--dcp-slo-tpot-ms", "35", "--dcp-split-cost-k", "0")
    assert k.policy_options()["split_cost_k"] == 0.0
    assert options(parser, "--dcp-policy", "round_robin").policy == "round_robin"
    off = options(parser, "--dcp-policy", "off", "--load-balance-method", "total_tokens")
    assert off.policy == "off"
    assert b.transfer_chunk_mb == 32  # shard moves' staging, per buffer (move_reserve.py)
    c = options(parser, "--disable-radix-cache", "--dcp-transfer-chunk-mb", "8")
    assert c.transfer_chunk_mb == 8 and DcpOptions.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--dcp-max-degree", "3", "--disable-radix-cache"], "exceeds --dp-size 2"),
        (["--dcp-max-degree", "2", "--disable-radix-cache", "--attention-backend", "wave"],
         "a dense attention backend (triton, torch_native"),
        (["--dcp-max-degree", "2", "--disable-radix-cache", "--attention-backend", "dsa"],
         "is sparse or compressed"),
        (["--dcp-max-degree", "2", "--enable-two-batch-overlap"], "--enable-two-batch-overlap"),
        (["--dcp-max-degree", "2", "--enable-mixed-chunk"], "--enable-mixed-chunk puts decode"),
        (["--dcp-max-degree", "2", "--disable-radix-cache", "--attention-backend", "dcp_triton"],
         "needs CUDA"),
        (["--dcp-kv-capacity", "0", "--disable-radix-cache"], "--dcp-kv-capacity must be >= 1"),
        (["--dcp-max-degree", "0"], "must be >= 1"),
        (["--dcp-policy", "off", "--dcp-max-degree", "1"], "need(s) a planner"),
        (["--dcp-policy", "round_robin", "--dcp-min-shard-tokens", "64"], "applies to"),
        (["--dcp-policy", "total_tokens", "--dcp-cost-profile", "x"], "applies to"),
        (["--dcp-cost-profile", "no-such-profile"], "unknown cost profile"),
        (["--load-balance-method", "round_robin", "--dcp-max-degree", "1"], "SGLang's own dispatcher"),
        (["--tokenizer-worker-num", "2"], "--tokenizer-worker-num"),
        (["--dcp-queue-max-bypass", "-1"], "--dcp-queue-max-bypass must be >= 0"),
        (["--dcp-policy", "round_robin", "--dcp-queue-max-bypass", "4"],
         "wait in the DP controller"),
        (["--dcp-slo-tpot-ms", "0"], "--dcp-slo-tpot-ms must be > 0"),
        (["--dcp-policy", "uniform", "--dcp-slo-tpot-ms", "50"], "applies to --dcp-policy dcp"),
        (["--dcp-policy", "total_tokens", "--dcp-split-rule", "gain"], "applies to"),
        (["--dcp-policy", "uniform", "--dcp-split-cost-k", "2"], "applies to --dcp-policy dcp"),
        (["--dcp-split-cost-k", "-1"], "--dcp-split-cost-k must be >= 0"),
        (["--dcp-max-degree", "1", "--dcp-rebalance-threshold", "1.5"],
         "needs --dcp-policy dcp and --dcp-max-degree > 1"),
        (["--disable-radix-cache", "--dcp-rebalance-threshold", "0.5"], "max/mean KV ratio, >= 1"),
        (["--dcp-transfer-chunk-mb", "0"], "--dcp-transfer-chunk-mb must be >= 1"),
        (["--dcp-ranks-per-node", "3"], "--dcp-ranks-per-node 3 must be >= 1 and divide --dp-size 2"),
    ],
)
def test_bad_combinations_are_one_line_errors(parser, extra, message, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton on CPU only interpreted
    with pytest.raises(launch.LaunchError) as e:
        options(parser, *extra)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_load_balance_method_dcp_is_the_planner_and_sglangs_methods_stay_selectable(parser):
    argv = launch.translate_lb_method(SERVE + ["--load-balance-method", "dcp"])
    assert argv == SERVE + ["--dcp-policy", "dcp"]
    assert launch.translate_lb_method(["--load-balance-method=dcp"]) == ["--dcp-policy", "dcp"]
    assert options(parser, *argv[len(SERVE):]).policy == "dcp"
    for method in ("round_robin", "total_tokens"):
        assert launch.translate_lb_method(["--load-balance-method", method]) == [
            "--load-balance-method", method]
        assert options(parser, "--load-balance-method", method).policy == "off"


def test_no_dp_attention_means_off_unless_asked(parser):
    ns = parser.parse_args(["--model-path", "m"])
    ns.load_balance_method_given = False
    assert launch.dcp_options(ns).policy == "off"
    with pytest.raises(OptionsError, match="need\\(s\\) --enable-dp-attention"):
        resolve(policy="dcp", profile=None, max_degree=None, min_shard_tokens=None, dp_size=1,
                enable_dp_attention=False, load_balance_method_given=False)  # fmt: skip


def test_unknown_policy_is_an_argparse_error(parser, capsys):
    with pytest.raises(SystemExit) as e:
        parser.parse_args(SERVE + ["--dcp-policy", "nope"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_our_flags_are_stripped_before_sglang_parses():
    argv = SERVE + ["--dcp-policy", "dcp", "--dcp-max-degree=1", "--dcp-cost-profile", "p",
                    "--dcp-min-shard-tokens", "8", "--dcp-kv-capacity", "64",
                    "--dcp-queue-max-bypass", "3", "--demo"]  # fmt: skip
    assert launch.split_argv(argv) == SERVE


def test_options_travel_through_the_environment(monkeypatch):
    o = DcpOptions("dcp", "deepseek-v3-h200", 1, 256, queue_max_bypass=3)
    monkeypatch.setenv(env.SERVE_OPTIONS_VAR, o.to_json())
    assert DcpOptions.from_env() == o
    monkeypatch.delenv(env.SERVE_OPTIONS_VAR)
    assert DcpOptions.from_env().policy == "off" and not DcpOptions.from_env().enabled


def test_rust_egress_is_refused_with_the_planner(parser, monkeypatch):
    monkeypatch.setenv("SGLANG_RUST_SERVER", "1")
    with pytest.raises(launch.LaunchError, match="SGLANG_RUST_SERVER") as e:
        options(parser)
    assert "\n" not in str(e.value)
    assert options(parser, "--dcp-policy", "off").policy == "off"
    monkeypatch.setenv("SGLANG_RUST_SERVER", "0")
    assert options(parser).policy == "dcp"


def test_quantized_kv_with_sharding():
    from sglang_dcp.sglang.mla import quantized_kv_error

    assert quantized_kv_error("fp8_e4m3", cuda=True) is None  # the exchange applies the scales
    for dtype in ("fp8_e5m2", "mxfp8", "nvfp4"):
        msg = quantized_kv_error(dtype, cuda=True)
        assert msg.startswith(f"--kv-cache-dtype {dtype}") and "fp8_e4m3" in msg
    assert "torch_native" in quantized_kv_error("fp8_e4m3", cuda=False)


def test_deepep_moe_composes_with_sharding(parser, monkeypatch):
    """--moe-a2a-backend deepep (the mission's MoE): the exchange is independent of the MoE
    all-to-all, so sharding stays on and the launcher passes SGLang's MoE flags through."""
    extra = ["--disable-radix-cache", "--moe-a2a-backend", "deepep", "--ep-size", "2",
             "--deepep-mode", "low_latency"]  # fmt: skip
    o = options(parser, *extra)
    assert o.sharding and o.max_degree == 2
    argv = launch.sharding_argv(SERVE + extra, o, cuda=True)
    assert argv[: len(SERVE) + len(extra)] == SERVE + extra
    assert "--attention-backend" not in argv
    # TBO and mixed chunks stay available without sharding: the default degree falls back to 1
    assert not options(parser, "--enable-two-batch-overlap").sharding
    assert not options(parser, "--enable-mixed-chunk").sharding
    # on GPU, a quantized cache the exchange cannot read: the default degree falls back to 1
    monkeypatch.setattr(launch, "_has_cuda", lambda: True)
    assert not options(parser, "--kv-cache-dtype", "fp8_e5m2").sharding


@pytest.mark.parametrize("extra", [[], ["--dcp-max-degree", "1"], ["--dcp-policy", "off"]])
def test_a_quantized_kv_cache_is_refused_on_cpu_with_or_without_sharding(parser, monkeypatch,
                                                                          extra):
    """SGLang's CPU attention cannot read a quantized cache, whatever the degree: one line at
    startup instead of a scheduler traceback."""
    monkeypatch.setattr(launch, "_has_cuda", lambda: False)
    with pytest.raises(launch.LaunchError, match="fp8_e4m3.*drop --kv-cache-dtype"):
        options(parser, "--kv-cache-dtype", "fp8_e4m3", *extra)


def test_triton_on_cpu_runs_under_the_interpreter(parser, monkeypatch):
    """SGLang's triton backend serves on CPU under TRITON_INTERPRET=1 (slow; the second inner
    backend of the e2e tests), so the launcher lets it through then."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert options(parser, "--disable-radix-cache", "--attention-backend", "triton").sharding


def test_a_pd_decode_server_shards_paged_or_not_without_a_decode_prefix_cache(parser):
    """Issue 24: a PD decode server lands KV in shards (pd_landing.py) on unpaged and paged
    pools; with SGLang's decode radix cache it places requests whole, and a degree above 1 is
    refused with the reason."""
    assert options(parser, "--disable-radix-cache", "--disaggregation-mode", "decode").sharding
    paged = ("--disaggregation-mode", "decode", "--page-size", "16")
    assert options(parser, "--disable-radix-cache", *paged).sharding
    cached = (*paged, "--disaggregation-decode-enable-radix-cache")
    o = options(parser, "--disable-radix-cache", *cached)
    assert o == DcpOptions(policy="dcp", max_degree=1) and not o.sharding
    with pytest.raises(launch.LaunchError, match="no --disaggregation-decode-enable-radix-cache"):
        options(parser, "--disable-radix-cache", *cached, "--dcp-max-degree", "2")


def test_ranks_per_node_sets_the_exchanges_node_scope(parser):
    """``--dcp-ranks-per-node`` (default ``--dp-size / --nnodes``): several nodes give the
    planner its node boundaries and the graphs a node-scoped variant per bucket; one node
    (the default on one host) none."""
    from sglang_dcp.sglang.graphs import DcpGraphVariants, bucket_of, label, node_scoped

    assert options(parser).ranks_per_node is None
    two = options(parser, "--dcp-ranks-per-node", "1")
    assert two.ranks_per_node == 1 and DcpOptions.from_json(two.to_json()) == two
    assert options(parser, "--nnodes", "2").ranks_per_node == 1
    assert options(parser, "--dcp-ranks-per-node", "2").ranks_per_node is None  # one node
    assert DcpGraphVariants((1, 2), node_scope=True).capture_labels == (
        "dcp2", "dcp2n", "dcp1", "dcp1n", "plain")
    assert DcpGraphVariants((1, 2)).capture_labels == ("dcp2", "dcp1", "plain")
    assert (bucket_of(label(4, True)), node_scoped(label(4, True))) == (4, True)
    assert (bucket_of("dcp16"), node_scoped("dcp16"), bucket_of("plain")) == (16, False, None)
