"""The launcher behind ``python -m sglang_dcp.launch_server``: SGLang's launch_server with the sglang-dcp plugin.

Accepts every ``python -m sglang.launch_server`` argument, plus:

  --demo   serve the embedded default: a tiny random-weight Qwen3-MoE (made in the cache
           folder if missing) on CPU with DP attention over 4 DP ranks, KV sharding on and a
           1024-token planner budget per rank, so prompts over ~1000 tokens span ranks.
  --demo-model tiny-deepseek-v3
           the same with a tiny DeepSeek-V3-architecture model (MLA) instead.
  --dcp-policy, --dcp-cost-profile, --dcp-max-degree, --dcp-min-shard-tokens, --dcp-kv-capacity,
  --dcp-queue-max-bypass, --dcp-slo-tpot-ms, --dcp-split-rule, --dcp-split-cost-k,
  --dcp-rebalance-threshold
           the planner in the DP controller (on by default with DP attention over > 1 rank);
           checked here, then handed to SGLang's spawned processes as JSON in
           $SGLANG_DCP_SERVE_OPTIONS (``env.SERVE_OPTIONS_VAR``; set only by this launcher).
           With a max degree > 1 the launcher also selects ``--attention-backend dcp_triton``
           (torch_native on CPU; the DCP exchange wraps it) and, on CUDA,
           ``--cuda-graph-backend-prefill disabled`` (decode CUDA graphs stay on, captured
           with and without the exchange). Overlap scheduling stays on (``overlap.py``);
           ``--disable-overlap-schedule`` still turns it off.

On a machine without CUDA it sets what SGLang's CPU engine needs (``--device cpu``,
``SGLANG_USE_CPU_ENGINE=1``, one OpenMP core binding per TP rank), ``--disable-cuda-graph`` and a
``--mem-fraction-static`` that keeps all ranks within half the memory, unless you set them; with
``--disaggregation-mode prefill|decode`` also the PD settings of ``pd_cpu.py``. Bad
arguments end with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import threading
import warnings

from sglang_dcp import env
from sglang_dcp.sglang import fast_start, quiet
from sglang_dcp.sglang.demo import DEFAULT_DEMO_MODEL, DEMO_MODELS, demo_argv, demo_note
from sglang_dcp.sglang.flags import add_dcp_args, split_argv, translate_lb_method
from sglang_dcp.sglang.launch_checks import LaunchError, check_args, refuse_with_sharding
from sglang_dcp.sglang.host import (
    _announce_when_ready, _has_cuda, become_subreaper, prepare_cpu_environment,
)  # fmt: skip
from sglang_dcp.sglang.pd_cpu import pd_cpu_argv
from sglang_dcp.sglang.mla import UNQUANTIZED_KV, quantized_kv_error
from sglang_dcp.sglang.options import (
    ATTENTION_BACKEND, DcpOptions, OptionsError, resolve,
)  # fmt: skip

PROG = "python -m sglang_dcp.launch_server"


class _OneLineParser(argparse.ArgumentParser):
    """SGLang has hundreds of flags: print the error, not a page of usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from sglang.srt.server_args import ServerArgs

    from sglang_dcp.sglang import backend

    backend.register()  # --attention-backend dcp_triton (also done by the plugin)
    parser = _OneLineParser(
        prog=PROG,
        description="SGLang server with request-level dynamic context parallelism (sglang-dcp).",
    )
    ServerArgs.add_cli_args(parser)
    add_dcp_args(parser)
    return parser


def demo_model_path(name: str = DEFAULT_DEMO_MODEL) -> str:
    """The checkpoint of demo model ``name`` (``demo.DEMO_MODELS``), built on first use."""
    path = os.path.join(env.cache_dir(), f"{name}-seed0")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        build = importlib.import_module(DEMO_MODELS[name]).build
        print(f"[sglang-dcp] building the demo model in {path}", flush=True)
        tmp = path + f".tmp{os.getpid()}"
        build(tmp, seed=0)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.replace(tmp, path)
        except OSError:  # another launcher built it first (the same seed: the same weights)
            if not os.path.exists(os.path.join(path, "model.safetensors")):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def dcp_options(ns: argparse.Namespace) -> DcpOptions:
    """The planner settings for this server, checked against the rest of the flags."""
    try:
        opts = resolve(
            policy=ns.dcp_policy,
            profile=ns.dcp_cost_profile,
            max_degree=ns.dcp_max_degree,
            min_shard_tokens=ns.dcp_min_shard_tokens,
            dp_size=ns.dp_size or 1,
            enable_dp_attention=bool(ns.enable_dp_attention),
            load_balance_method_given=ns.load_balance_method_given,
            kv_capacity=ns.dcp_kv_capacity,
            queue_max_bypass=ns.dcp_queue_max_bypass,
            slo_tpot_ms=ns.dcp_slo_tpot_ms,
            split_rule=ns.dcp_split_rule,
            split_cost_k=ns.dcp_split_cost_k,
            max_guest_items=ns.dcp_max_guest_items,
            rebalance_threshold=ns.dcp_rebalance_threshold,
            transfer_chunk_mb=ns.dcp_transfer_chunk_mb,
            ranks_per_node=ns.dcp_ranks_per_node,
            nnodes=getattr(ns, "nnodes", 1) or 1,
            tp_size=ns.tp_size or 1,
            disable_radix_cache=bool(ns.disable_radix_cache),
            attention_backend=ns.attention_backend,
            pd_decode_prefix_cache=getattr(ns, "disaggregation_mode", None) == "decode"
            and bool(getattr(ns, "disaggregation_decode_enable_radix_cache", False)),
        )
    except OptionsError as e:
        raise LaunchError(str(e)) from None
    chunk = getattr(ns, "chunked_prefill_size", None)
    pd_decode = getattr(ns, "disaggregation_mode", None) == "decode"  # never prefills
    if opts.sharding and chunk is not None and chunk > 0 and not pd_decode:  # issue 18
        # SGLang gives each DP-attention rank chunk // dp_size (arg_groups/parallel_hook.py:266)
        opts = dataclasses.replace(opts, prefill_chunk=max(1, chunk // (ns.dp_size or 1)))
    if (opts.sharding and ns.attention_backend in ("triton", ATTENTION_BACKEND)
            and not _has_cuda() and os.environ.get("TRITON_INTERPRET") != "1"):  # fmt: skip
        raise LaunchError(
            f"--attention-backend {ns.attention_backend} needs CUDA (or TRITON_INTERPRET=1, "
            "slow); on CPU the DCP exchange runs over torch_native (drop the flag)"
        )
    refusal = opts.sharding and refuse_with_sharding(
        two_batch_overlap=bool(getattr(ns, "enable_two_batch_overlap", False)),
        mixed_chunk=bool(getattr(ns, "enable_mixed_chunk", False)),
    )
    kv_dtype = getattr(ns, "kv_cache_dtype", None) or "auto"
    if kv_dtype not in UNQUANTIZED_KV and not _has_cuda():  # SGLang's CPU attention cannot
        raise LaunchError(quantized_kv_error(kv_dtype, False))  # read it, sharding or not
    if not refusal and opts.sharding and kv_dtype not in UNQUANTIZED_KV:
        refusal = quantized_kv_error(kv_dtype, _has_cuda())
    if refusal and ns.dcp_max_degree is None:
        # sharding only by default (the radix cache no longer blocks it): these flags keep
        # their meaning and the degree falls back to 1, as with an unshardable backend
        opts = dataclasses.replace(opts, max_degree=1, prefill_chunk=None)
    elif refusal:
        raise LaunchError(refusal)
    if opts.enabled and (getattr(ns, "tokenizer_worker_num", 1) or 1) > 1:
        raise LaunchError(
            "--tokenizer-worker-num > 1 is not supported with the sglang-dcp planner yet; "
            "drop it or pass --dcp-policy off"
        )
    if opts.enabled and rust_egress_on():
        # With it SGLang runs no DP controller (server_args.py:758), and the output streamer
        # refuses the meta_info["dcp"] opt-in (output_streamer.py:68).
        raise LaunchError(
            "SGLANG_RUST_SERVER (SGLang's Rust egress) is not supported with the sglang-dcp "
            "planner; unset it or pass --dcp-policy off"
        )
    return opts


PREFILL_GRAPH_FLAG = "--cuda-graph-backend-prefill"


def sharding_argv(sglang_argv: list[str], opts: DcpOptions, cuda: bool) -> list[str]:
    """With KV sharding on, keep the attention backend the user chose, or SGLang's default on GPU
    (the DCP wrapper goes around any dense one); on CPU, where SGLang would pick intel_amx,
    torch_native. Overlap scheduling is left as the user set it (on by default: ``overlap.py``).

    Decode CUDA graphs stay on: every batch size is captured twice, without and with the
    exchange (``graphs.py``). Prefill graphs are turned off (``--cuda-graph-backend-prefill
    disabled``): a replayed prefill would skip the exchange its rank must join in a DCP step;
    another value for that flag, or SGLang's metadata glue graph (host-fed metadata would replay
    frozen), is refused."""
    if not opts.sharding:
        return sglang_argv
    from sglang_dcp import env as dcp_env

    if dcp_env.metadata_glue_graph():
        raise LaunchError(
            "SGLANG_ENABLE_METADATA_GLUE_GRAPH captures the attention metadata once, but KV "
            "sharding rebuilds it every step; unset it or pass --dcp-max-degree 1"
        )
    names = {a.split("=", 1)[0] for a in sglang_argv}
    extra = []
    if "--attention-backend" not in names and not cuda:  # SGLang's CPU default needs AMX
        extra += ["--attention-backend", "torch_native"]
    prefill = _value_of(sglang_argv, PREFILL_GRAPH_FLAG)
    if prefill is not None and prefill != "disabled":
        raise LaunchError(
            f"{PREFILL_GRAPH_FLAG} {prefill}: KV sharding runs prefills eagerly (a replayed "
            f"prefill graph would skip the exchange); pass {PREFILL_GRAPH_FLAG} disabled or "
            "--dcp-max-degree 1"
        )
    if cuda and prefill is None and "--disable-cuda-graph" not in names:
        extra += [PREFILL_GRAPH_FLAG, "disabled"]
    return sglang_argv + extra


def _value_of(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def rust_egress_on() -> bool:
    from sglang.srt.environ import envs

    return bool(envs.SGLANG_RUST_SERVER.get())


def enable_dcp(opts: DcpOptions) -> None:
    """Hand the options to SGLang's spawned processes and hook this one (the tokenizer's)."""
    os.environ[env.SERVE_OPTIONS_VAR] = opts.to_json()
    quiet.quiet_child_warnings()
    if opts.enabled:
        from sglang_dcp.sglang import hooks, observe

        observe.require_load_snapshot_section()  # the plugin's own check only logs (SGLang)
        hooks.install(True, apply=True)


def main(argv: list[str] | None = None) -> int:
    argv = translate_lb_method(list(sys.argv[1:] if argv is None else argv))
    # Only this launcher sets it, after checking the flags (enable_dcp); never inherit one.
    os.environ.pop(env.SERVE_OPTIONS_VAR, None)
    pre = argparse.ArgumentParser(add_help=False)
    add_dcp_args(pre)
    ours, _ = pre.parse_known_args(argv)

    try:
        demo_set: set[str] = set()
        try:
            fast_start.wanted(cuda=False)  # its only error: a bad SGLANG_DCP_START_METHOD
        except ValueError as e:
            raise LaunchError(str(e)) from None
        if ours.demo_model and not ours.demo:
            raise LaunchError("--demo-model applies only with --demo (or pass --model-path PATH)")
        if ours.demo:
            argv, demo_set = demo_argv(argv, demo_model_path(ours.demo_model or DEFAULT_DEMO_MODEL))
        # Loads sglang_dcp's plugin (and any other installed one) before argument parsing,
        # as sglang.launch_server does, so plugin-added choices are accepted.
        with warnings.catch_warnings():
            # SGLang warns at import that AWQ/GGUF need CUDA; irrelevant to this launcher.
            warnings.filterwarnings("ignore", message="Only CUDA", category=UserWarning)
            from sglang.srt.plugins import load_plugins

            load_plugins()
            parser = build_parser()
        ns = parser.parse_args(argv)  # argparse errors: one line, exit 2
        ns.load_balance_method_given = any(
            a.split("=", 1)[0] == "--load-balance-method" for a in argv
        )
        check_args(ns)
        opts = dcp_options(ns)
        sglang_argv = prepare_cpu_environment(split_argv(argv), ns.tp_size or 1)
        if not _has_cuda():
            sglang_argv = pd_cpu_argv(sglang_argv)
        sglang_argv = sharding_argv(sglang_argv, opts, _has_cuda())
    except LaunchError as e:
        print(f"{PROG}: error: {demo_note(str(e), demo_set)}", file=sys.stderr)
        return 2

    from sglang.launch_server import run_server
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    try:
        server_args = prepare_server_args(sglang_argv)
    except (ValueError, AssertionError) as e:
        print(f"{PROG}: error: {demo_note(f'invalid server arguments: {e}', demo_set)}",
              file=sys.stderr)  # fmt: skip
        return 2

    fast_start.enable_in_launcher(_has_cuda())
    enable_dcp(opts)
    become_subreaper()
    host = "127.0.0.1" if ns.host in (None, "0.0.0.0") else ns.host
    threading.Thread(
        target=_announce_when_ready, args=(host, ns.port, ours.demo), daemon=True
    ).start()
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
