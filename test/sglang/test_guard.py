"""The input guard's checks (sglang_dcp/sglang/guard.py), without a server: each bad field is a
one-line ``ValueError`` naming it; what SGLang checks itself passes through."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from sglang_dcp.sglang import guard
from sglang_dcp.sglang.guard import InvalidRequest, bools_for_ints, check_request

KNOWN = ("max_new_tokens", "temperature", "top_k", "n", "stop", "stop_token_ids", "logit_bias",
         "ignore_eos", "stream_interval", "regex", "custom_params", "is_normalized")  # fmt: skip


def req(**kw):
    return SimpleNamespace(**{"text": None, "input_ids": None, "sampling_params": None, **kw})


def check(**kw):
    check_request(req(**kw), known=KNOWN, vocab_size=512)


@pytest.mark.parametrize(
    "sp,fragment",
    [
        ({"max_new_tokens": 4.5}, "sampling_params.max_new_tokens must be an integer, got 4.5"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer, got True"),
        ({"max_new_tokens": "ten"}, "max_new_tokens must be an integer, got 'ten'"),
        ({"temperature": "hot"}, "sampling_params.temperature must be a number"),
        ({"temperature": False}, "temperature must be a number"),
        ({"bar": 3}, "unknown sampling parameter 'sampling_params.bar'"),
        ({"is_normalized": True}, "unknown sampling parameter"),  # SGLang's own, not a client's
        ({"n": 0}, "n must be in [1, 256]"),
        ({"n": 10**9}, "n must be in [1, 256]"),
        ({"stream_interval": 0}, "stream_interval must be >= 1"),
        ({"stop": 5}, "stop must be a string or a list of strings"),
        ({"stop_token_ids": [1, 512]}, "stop_token_ids[1] = 512 is outside the vocabulary"),
        ({"logit_bias": {"5": "x"}}, "logit_bias['5'] must be a number"),
        ({"ignore_eos": 1}, "ignore_eos must be true or false"),
        ({"regex": 5}, "regex must be a string"),
        ({"custom_params": [1]}, "custom_params must be an object"),
    ],
)
def test_bad_sampling_params_name_the_field(sp, fragment):
    with pytest.raises(InvalidRequest) as e:
        check(text="hi", sampling_params=sp)
    assert fragment in str(e.value)


def test_batches_name_the_item():
    with pytest.raises(InvalidRequest, match=r"sampling_params\[1\]\.top_k"):
        check(text=["a", "b"], sampling_params=[{"top_k": 3}, {"top_k": 2.5}])
    with pytest.raises(InvalidRequest, match=r"input_ids\[1\]\[1\] = 100000 is outside"):
        check(input_ids=[[5, 6], [7, 100000]])
    with pytest.raises(InvalidRequest, match=r"input_ids\[0\] must be a non-empty list"):
        check(input_ids=[[], [1]])


@pytest.mark.parametrize("ids", [[], [5, -1], [5, 100000], [5, True], "5"])
def test_bad_input_ids(ids):
    with pytest.raises(InvalidRequest, match="input_ids"):
        check(input_ids=ids)


def test_what_sglang_checks_itself_passes_through():
    # ranges SGLang's SamplingParams.verify answers with its own 400 and message
    check(text="hi", sampling_params={"max_new_tokens": -1, "temperature": -2.0, "top_k": 0})
    check(text="hi", sampling_params={"max_new_tokens": None, "temperature": None})
    check(input_ids=[0, 511], sampling_params={"n": 2, "stop": ["a"], "logit_bias": {"5": 1}})
    check(text="hi")


class _Completion(BaseModel):
    max_tokens: int | None = None
    n: int = 1
    echo: bool = False
    logprobs: int | bool | None = None


def test_openai_bools_where_ints_belong():
    fields = _Completion.model_fields
    assert bools_for_ints({"max_tokens": True, "echo": True}, fields) == ["max_tokens"]
    assert bools_for_ints({"n": False, "logprobs": True}, fields) == ["n"]
    assert bools_for_ints({"max_tokens": 3, "unknown": True}, fields) == []
    assert bools_for_ints(["not", "a", "dict"], fields) == []


def test_the_hooks_are_listed():
    from sglang_dcp.sglang import hooks

    ours = {h.hook for h in hooks.HOOKS if h.hook.startswith("sglang_dcp.sglang.guard:")}
    assert ours == {f"sglang_dcp.sglang.guard:{f}" for f in (
        "around_generate_request", "before_validate_one_request", "around_openai_handle_request")}
    assert guard.MAX_N == 256
