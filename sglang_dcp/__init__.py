"""sglang-dcp: request-level dynamic context parallelism for SGLang DP-attention + EP MoE decoding.

Layout (data flows one way): ``planner`` -> placement -> ``exchange`` route plan -> ``kernels``
(split-KV decode attention, LSE merge) -> merge at home. ``sglang_dcp.sglang`` is the only
package that imports SGLang.
"""

__version__ = "0.1.0"
