"""The 2-rank DCP server that ``test_server_dp*.py`` share (``dp2_server`` in conftest.py)."""

KV_PER_RANK = 4096  # small enough that a request can be too big for any rank


def dp2_args(model_path: str) -> list[str]:
    """``tiny_dp_args`` on 2 ranks with metrics on and ``KV_PER_RANK`` KV tokens per rank."""
    from sglang_dcp.testing.server import tiny_dp_args

    return [*tiny_dp_args(model_path, 2), "--enable-metrics",
            "--max-total-tokens", str(KV_PER_RANK)]  # fmt: skip
