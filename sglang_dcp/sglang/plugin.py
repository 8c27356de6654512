"""The ``sglang.srt.plugins`` entry point of sglang-dcp.

SGLang 0.5.21 calls ``register()`` through ``load_plugins()`` in the launching process and in
every scheduler process (not in the DP-controller or detokenizer processes). It must stay cheap
and idempotent.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_REGISTERED = False


def register() -> None:
    """Apply sglang-dcp's hooks to SGLang in this process."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    from sglang_dcp.sglang import cpu_compat

    cpu_compat.install()
    fixes = cpu_compat.apply_sglang_fixes()
    if fixes:
        logger.info("sglang_dcp: applied CPU fixes: %s", ", ".join(fixes))
