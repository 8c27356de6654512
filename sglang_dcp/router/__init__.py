"""Several sglang-dcp servers behind SGLang's router (the SGLang Model Gateway, PyPI ``smg``).

``launch.py`` is ``python -m sglang_dcp.launch_router``: the real router with defaults that suit
DCP workers, every other router flag passed through, and ``--demo`` (two tiny CPU servers behind
it). Nothing here imports SGLang or torch: the router is a Rust binary that talks HTTP to the
servers.
"""
