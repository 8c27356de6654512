"""``--demo`` presets yield to what the user typed (sglang_dcp/sglang/demo.py): every policy and
SGLang's own dispatch resolve without a flag the user never typed, and errors that involve a
demo flag say so. The real starts are in test/e2e/test_demo_budget.py."""

from __future__ import annotations

import warnings

import pytest

from sglang_dcp.sglang import launch
from sglang_dcp.sglang.demo import demo_argv, demo_note, typed_flags

warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)


@pytest.fixture(scope="module")
def parser():
    return launch.build_parser()


def resolved(parser, user):
    argv, demo_set = demo_argv(launch.translate_lb_method(user), "/tmp/model")
    ns = parser.parse_args(argv)
    ns.load_balance_method_given = "--load-balance-method" in typed_flags(argv)
    return launch.dcp_options(ns), typed_flags(argv), demo_set


@pytest.mark.parametrize(
    "user,policy,degree",
    [
        ([], "dcp", 4),
        (["--dcp-policy", "dcp"], "dcp", 4),
        (["--load-balance-method", "dcp"], "dcp", 4),
        (["--dcp-policy", "round_robin"], "round_robin", 1),
        (["--dcp-policy", "total_tokens"], "total_tokens", 1),
        (["--dcp-policy", "uniform"], "uniform", 1),
        (["--dcp-policy", "off"], "off", 1),
        (["--load-balance-method", "round_robin"], "off", 1),
        (["--load-balance-method=total_tokens"], "off", 1),
    ],
)
def test_every_policy_resolves_with_the_demo(parser, user, policy, degree):
    opts, flags, demo_set = resolved(parser, ["--demo", *user])
    assert opts.policy == policy and opts.max_degree == degree
    if policy == "off":
        assert "--dcp-kv-capacity" not in flags and "--dcp-min-shard-tokens" not in flags
    else:
        assert opts.kv_capacity == 1024
    assert ("--dcp-min-shard-tokens" in flags) == (policy == "dcp")


def test_tp_and_dp_follow_each_other():
    argv, _ = demo_argv(["--dp-size", "3"], "/m")
    assert typed_flags(argv)["--tp-size"] == "3" and typed_flags(argv)["--dp-size"] == "3"
    argv, _ = demo_argv(["--tp-size=2"], "/m")
    assert typed_flags(argv)["--dp-size"] == "2"


def test_typed_flags_win_and_are_not_blamed_on_the_demo():
    argv, demo_set = demo_argv(["--port", "1234", "--dcp-kv-capacity", "256"], "/m")
    flags = typed_flags(argv)
    assert flags["--port"] == "1234" and flags["--dcp-kv-capacity"] == "256"
    assert "--port" not in demo_set and "--tp-size" in demo_set
    assert demo_note("--tp-size 4 is wrong", demo_set) == "--tp-size 4 is wrong (--tp-size set by --demo)"
    assert demo_note("--port 1234 is taken", demo_set) == "--port 1234 is taken"


def test_user_model_path_replaces_the_demo_model():
    argv, _ = demo_argv(["--model-path", "/mine"], "/demo")
    assert typed_flags(argv)["--model-path"] == "/mine" and "/demo" not in argv


def test_demo_models_build_and_the_flag_is_ours():
    import importlib

    from sglang_dcp.sglang.demo import DEFAULT_DEMO_MODEL, DEMO_MODELS
    from sglang_dcp.sglang.flags import split_argv

    assert DEFAULT_DEMO_MODEL == "tiny-qwen3-moe" and "tiny-deepseek-v3" in DEMO_MODELS
    assert all(callable(importlib.import_module(m).build) for m in DEMO_MODELS.values())
    argv = ["--demo", "--demo-model", "tiny-deepseek-v3", "--port", "1", "--demo-model=x"]
    assert split_argv(argv) == ["--port", "1"]  # SGLang never sees it


def test_two_launchers_building_the_demo_model_at_once_both_get_it(tmp_path, monkeypatch):
    """The second ``os.replace`` onto the first's finished folder fails: it takes that one."""
    monkeypatch.setenv("SGLANG_DCP_CACHE_DIR", str(tmp_path))
    name = launch.DEFAULT_DEMO_MODEL
    final = tmp_path / f"{name}-seed0"

    def build(path, seed):  # a rival finishes first, while this one is still building
        import os

        os.makedirs(path)
        (tmp_path / "rival").mkdir()
        (tmp_path / "rival" / "model.safetensors").write_text("rival")
        os.replace(tmp_path / "rival", final)
        open(os.path.join(path, "model.safetensors"), "w").write("mine")

    monkeypatch.setattr(launch.importlib, "import_module",
                        lambda mod: type("M", (), {"build": staticmethod(build)}))
    assert launch.demo_model_path(name) == str(final)
    assert (final / "model.safetensors").read_text() == "rival"
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]  # its own copy removed
