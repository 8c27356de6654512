"""``python -m sglang_dcp.launch_router``: SGLang's router (smg) in front of several sglang-dcp
servers, with defaults that suit DCP workers.

Accepts every ``python -m smg.launch_router`` argument (see ``--help``); ``--demo`` starts two
tiny CPU servers and the router in front of them. The logic lives in
``sglang_dcp.router.launch``.
"""

import sys

from sglang_dcp.router.launch import main

if __name__ == "__main__":
    sys.exit(main())
