"""``make demo-pd``'s flags (``sglang_dcp.router.pd_demo``): the servers' KV pools are sized in
tokens, the decode server has DP attention with the planner's default, and smg accepts the PD
router arguments the demo builds."""

from sglang_dcp.router import pd_demo
from sglang_dcp.router.args import parse_all
from sglang_dcp.testing.ports import free_low_port


def test_server_flags():
    prefill, decode = pd_demo.server_args("/m")
    assert prefill[prefill.index("--disaggregation-mode") + 1] == "prefill"
    assert decode[decode.index("--disaggregation-mode") + 1] == "decode"
    for flags in (prefill, decode):
        assert flags[flags.index("--max-total-tokens") + 1] == str(pd_demo.POOL_TOKENS)
    assert decode[decode.index("--dp-size") + 1] == str(pd_demo.PD_DECODE_DP)
    assert "--enable-dp-attention" in decode and "--dcp-max-degree" not in decode


def test_router_arguments_parse_in_pd_mode():
    port = free_low_port(avoid=0)
    metrics = free_low_port(avoid=port)  # not smg's default 29000: a running demo may hold it
    args, _ = parse_all(["--pd-disaggregation", "--prefill", "http://127.0.0.1:30010", "30998",
                         "--decode", "http://127.0.0.1:30020", "--port", str(port),
                         "--prometheus-port", str(metrics)])  # fmt: skip
    assert args.pd_disaggregation and args.decode_urls == ["http://127.0.0.1:30020"]
