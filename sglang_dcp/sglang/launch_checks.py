"""The launcher's own argument checks (``launch.py``): what SGLang would report as a traceback wall
or a hang, caught first and said in one line (``LaunchError``)."""

from __future__ import annotations

import argparse
import os
import socket


class LaunchError(Exception):
    """A bad argument or environment; printed as one line."""


def _looks_like_hub_id(path: str) -> bool:
    return (
        not path.startswith(("/", ".", "~"))
        and path.count("/") == 1
        and all(part.strip() for part in path.split("/"))
    )


def check_args(ns: argparse.Namespace) -> None:
    """Fail early, in one line, on what SGLang would report as a traceback wall or a hang."""
    if not ns.model_path:
        raise LaunchError("--model-path is required (or pass --demo to serve the embedded tiny model)")
    if not os.path.exists(ns.model_path) and not _looks_like_hub_id(ns.model_path):
        raise LaunchError(f"--model-path {ns.model_path!r} does not exist")
    tp, dp = ns.tp_size or 1, ns.dp_size or 1
    if tp < 1 or dp < 1:
        raise LaunchError(f"--tp-size and --dp-size must be >= 1, got {tp} and {dp}")
    if dp > 1 and ns.enable_dp_attention and tp % dp:
        raise LaunchError(
            f"--dp-size {dp} does not divide --tp-size {tp}: with --enable-dp-attention each DP "
            "rank owns tp_size/dp_size TP ranks; pick a dp-size that divides tp-size"
        )
    host = ns.host or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host != "0.0.0.0" else "", ns.port))
        except OSError as e:
            raise LaunchError(
                f"port {ns.port} on {host} is not available ({e.strerror}); pass --port with a free port"
            ) from None


def refuse_with_sharding(*, two_batch_overlap: bool, mixed_chunk: bool) -> str | None:
    """Why SGLang flags that cannot run with KV sharding must go (``None``: none given). The
    exchange joins each layer once per forward over the whole decode batch; these split a
    forward's attention or mix decode rows into a prefill batch, where split rows would skip
    it. (``--moe-a2a-backend deepep`` composes: the exchange is independent of the MoE's.)"""
    if two_batch_overlap:
        return (
            "--enable-two-batch-overlap runs each layer's attention twice per forward, on two "
            "micro-batches; the KV-sharding exchange joins each layer once over the whole "
            "batch: drop it or pass --dcp-max-degree 1"
        )
    if mixed_chunk:
        return (
            "--enable-mixed-chunk puts decode rows into prefill batches, where split requests' "
            "rows would miss the KV-sharding exchange: drop it or pass --dcp-max-degree 1"
        )
    return None
