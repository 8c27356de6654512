"""Quiet startup: SGLang's optional-import noise off the console.

SGLang 0.5.21 imports every model, multimodal processor and dLLM module at startup and logs a
WARNING for each that fails (``Ignore import error when loading ...``: modules that need CUDA-
only packages such as vllm or causal_conv1d). On CPU that is ~30 lines per scheduler before the
server is ready. Its hook registry logs one INFO line per hook our plugin applies (``Applied 1
hook(s) to ...``, ten per process). ``install()`` (run by the plugin in every process that loads
plugins) demotes both to DEBUG: ``--log-level debug`` shows them again. Importing SGLang's
quantization and FLA kernel modules warns (``Only CUDA ... support AWQ/GGUF``, ``Triton is not
supported on current platform``) once per module per process
(Python ``UserWarning``, before any plugin runs); ``quiet_child_warnings()`` (the launcher)
silences exactly those in the processes SGLang spawns, through ``PYTHONWARNINGS``.
"""

from __future__ import annotations

import logging
import os

PREFIX = "Ignore import error"
NOISY_LOGGERS = {  # logger -> the message prefix demoted to DEBUG
    "sglang.srt.models.registry": PREFIX,  # models/registry.py:132
    "sglang.srt.managers.multimodal_processor": PREFIX,  # managers/multimodal_processor.py:24
    "sglang.srt.dllm.algorithm": PREFIX,  # dllm/algorithm/__init__.py:20
    "sglang.srt.plugins.hook_registry": "Applied %d hook(s)",  # plugins/hook_registry.py:307
}
# import-time UserWarnings on CPU: quantization/{awq/awq,gguf}.py, kernels/.../fla/utils.py:223
CHILD_WARNINGS = "ignore:Only CUDA:UserWarning,ignore:Triton is not supported:UserWarning"


class _ImportNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        prefix = NOISY_LOGGERS.get(record.name)
        if prefix is None or not str(record.msg).startswith(prefix):
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


def quiet_child_warnings(environ=os.environ) -> None:
    """Add ``CHILD_WARNINGS`` to ``PYTHONWARNINGS`` (kept: whatever the user set there)."""
    have = [w for w in environ.get("PYTHONWARNINGS", "").split(",") if w]
    environ["PYTHONWARNINGS"] = ",".join(
        have + [w for w in CHILD_WARNINGS.split(",") if w not in have])
