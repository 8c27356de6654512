"""The launcher's PD settings on CPU (``sglang_dcp.sglang.pd_cpu``): added per mode, one line
each, never over what the user typed, nothing outside PD."""

from sglang_dcp.sglang.pd_cpu import pd_cpu_argv


def test_decode_gets_all_three_each_announced():
    said = []
    out = pd_cpu_argv(["--disaggregation-mode", "decode"], said.append)
    assert out[2:] == ["--disaggregation-transfer-backend", "mooncake_tcp",
                       "--no-enable-tp-lm-head-all-to-all",
                       "--disaggregation-decode-retraction-backup", "none"]  # fmt: skip
    assert len(said) == 3 and all(s.startswith("[sglang-dcp] PD decode on CPU: ") for s in said)


def test_prefill_gets_only_the_transport():
    out = pd_cpu_argv(["--disaggregation-mode=prefill"], lambda s: None)
    assert out[1:] == ["--disaggregation-transfer-backend", "mooncake_tcp"]


def test_what_the_user_typed_wins_and_colocated_is_untouched():
    typed = ["--disaggregation-mode", "decode", "--disaggregation-transfer-backend", "nixl",
             "--enable-tp-lm-head-all-to-all", "--disaggregation-decode-retraction-backup=cpu_tensor"]
    assert pd_cpu_argv(typed, lambda s: None) == typed
    assert pd_cpu_argv(["--dp-size", "4"], lambda s: None) == ["--dp-size", "4"]
