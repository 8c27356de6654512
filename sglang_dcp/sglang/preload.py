"""The fork server's first preload (``fast_start.PRELOAD``); imported there and nowhere else.

- quiets SGLang's import noise (``quiet.install``) before the modules after it import the
  model registry, which logs a warning for every model module that cannot load on this machine;
- forwards SIGQUIT to the launcher (``fast_start.forward_sigquit``): SGLang's processes signal
  a failure to their parent, which is this server for every process it forked.
"""

from sglang_dcp.sglang import fast_start, quiet

quiet.install()
fast_start.forward_sigquit()
