"""The fork server's first preload (``fast_start.PRELOAD``): quiet SGLang's import noise
(``quiet.install``) before the modules after it import the model registry, which logs a
warning for every model module that cannot load on this machine."""

from sglang_dcp.sglang import quiet

quiet.install()
