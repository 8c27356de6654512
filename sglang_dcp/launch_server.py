"""``python -m sglang_dcp.launch_server``: SGLang's launch_server with the sglang-dcp plugin.

Accepts every ``python -m sglang.launch_server`` argument plus sglang-dcp's own (see
``--help``); ``--demo`` serves the embedded tiny model. The logic lives in
``sglang_dcp.sglang.launch`` (the only package that imports SGLang).
"""

import sys

from sglang_dcp.sglang.launch import main

if __name__ == "__main__":
    sys.exit(main())
