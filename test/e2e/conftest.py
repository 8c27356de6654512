import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # hf_reference helpers

import pytest  # noqa: E402

from dp2 import dp2_args  # noqa: E402


@pytest.fixture(scope="session")
def dp2_server(launch_session_server, tiny_model_path):
    """One 2-rank DCP server for ``test_server_dp*.py`` (serving, what clients see, the
    planner's log; ``dp2.py``), planner decisions logged. The last of those modules stops it
    and checks the shutdown."""
    return launch_session_server(dp2_args(tiny_model_path),
                                 env={"SGLANG_DCP_PLANNER_LOG": "1"}, startup_timeout=600)
