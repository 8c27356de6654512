"""Quiet startup: SGLang's optional-import noise off the console.

SGLang 0.5.21 imports every model, multimodal processor and dLLM module at startup and logs a
WARNING for each that fails (``Ignore import error when loading ...``: modules that need CUDA-
only packages such as vllm or causal_conv1d). On CPU that is ~30 lines per scheduler before the
server is ready. ``install()`` (run by the plugin in every process that loads plugins) demotes
them to DEBUG: ``--log-level debug`` shows them again.
"""

from __future__ import annotations

import logging

NOISY_LOGGERS = (
    "sglang.srt.models.registry",  # models/registry.py:132
    "sglang.srt.managers.multimodal_processor",  # managers/multimodal_processor.py:24
    "sglang.srt.dllm.algorithm",  # dllm/algorithm/__init__.py:20
)
PREFIX = "Ignore import error"


class _ImportNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(PREFIX):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = _ImportNoise()


def install() -> None:
    """Idempotent; loggers that do not exist yet get the filter when created by name."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
