"""The input guard: a malformed request is an HTTP 400 naming the field, never a dead scheduler.

SGLang 0.5.21 hands request fields to its schedulers after checking ranges but not types, so
one body can take the server down or answer a bare 500 (both reproduce on a plain single-rank
SGLang): ``max_new_tokens: 4.5`` kills the home scheduler (``TypeError`` in
``output_ids_through_stop``), ``input_ids: [5, 100000]`` kills it too (``IndexError`` in the
embedding), ``max_new_tokens: "ten"``, ``temperature: "hot"`` or an unknown sampling parameter
is a 500, ``max_new_tokens: true`` is taken as 1, ``input_ids: []`` is a 500.

Two hooks on ``TokenizerManager`` (hooks.py; the launching process, always on), both raising
``ValueError``, which SGLang's HTTP layer answers with 400 (``/generate``: http_server.py:958;
the OpenAI endpoints: ``OpenAIServingBase.handle_request``) and a streaming request with an
error event, as for its own checks:

- ``generate_request`` (AROUND, tokenizer_manager.py:854): every request from ``/generate`` and
  the OpenAI endpoints passes here before ``normalize_batch_and_arguments``, which already
  reads ``n`` and ``input_ids[0]``. ``check_request`` checks the sampling parameters (each
  dict of a batch) and the shape of ``text`` / ``input_ids``.
- ``_validate_one_request`` (BEFORE, l.1259): every (sub-)request once tokenized, text prompts
  included; ``check_token_ids`` keeps ids inside ``[0, vocab_size)``.
- ``OpenAIServingBase.handle_request`` (AROUND, entrypoints/openai/serving_base.py:72): the
  OpenAI endpoints type their fields with pydantic, whose lax mode takes ``max_tokens: true``
  as 1; ``bools_for_ints`` finds such fields in the raw JSON body.

Types only (and the few values SGLang never checks and a scheduler cannot survive: ``n``,
``stream_interval``, ``stop_token_ids``, ``logit_bias`` values); ranges SGLang checks itself
(``SamplingParams.verify``, the context length) keep SGLang's 400 and message.
Pure Python: SGLang is imported only inside the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real

# SamplingParams fields filled by SGLang itself, never by a client (sampling_params.py:154).
INTERNAL_FIELDS = frozenset(
    {"stop_strs", "stop_regex_strs", "stop_str_max_len", "stop_regex_max_len", "is_normalized"}
)
INT_FIELDS = ("max_new_tokens", "top_k", "min_new_tokens", "n", "beam_width", "stream_interval",
              "sampling_seed")  # fmt: skip
FLOAT_FIELDS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty",
                "repetition_penalty")  # fmt: skip
BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
               "no_stop_trim", "ebnf_full_assistant")  # fmt: skip
STR_FIELDS = ("json_schema", "regex", "ebnf", "structural_tag")
STR_OR_LIST_FIELDS = ("stop", "stop_regex")
# SGLang expands n into n sub-requests before anything else looks at them (io_struct.py:582).
MAX_N = 256


class InvalidRequest(ValueError):
    """A request field of the wrong type or outside what a scheduler can run; one line."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _kind(v) -> str:
    return "null" if v is None else type(v).__name__


def check_sampling_params(sp, *, known: Iterable[str], vocab_size: int, where: str) -> None:
    """One request's ``sampling_params`` (a dict; ``None`` means SGLang's defaults)."""
    if sp is None:
        return
    if not isinstance(sp, Mapping):
        raise InvalidRequest(f"{where} must be an object, got {_kind(sp)}")
    known = set(known) - INTERNAL_FIELDS
    for name, v in sp.items():
        field = f"{where}.{name}"
        if name not in known:
            raise InvalidRequest(f"unknown sampling parameter {field!r}")
        if v is None:
            continue  # SGLang's default (SamplingParams.__post_init__)
        if name in INT_FIELDS and not _is_int(v):
            raise InvalidRequest(f"{field} must be an integer, got {v!r}")
        if name in FLOAT_FIELDS and not _is_real(v):
            raise InvalidRequest(f"{field} must be a number, got {v!r}")
        if name in BOOL_FIELDS and not isinstance(v, bool):
            raise InvalidRequest(f"{field} must be true or false, got {v!r}")
        if name in STR_FIELDS and not isinstance(v, str):
            raise InvalidRequest(f"{field} must be a string, got {_kind(v)}")
        if name in STR_OR_LIST_FIELDS and not (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
        ):
            raise InvalidRequest(f"{field} must be a string or a list of strings")
    n = sp.get("n")
    if n is not None and not 1 <= n <= MAX_N:
        raise InvalidRequest(f"{where}.n must be in [1, {MAX_N}], got {n}")
    si = sp.get("stream_interval")
    if si is not None and si < 1:
        raise InvalidRequest(f"{where}.stream_interval must be >= 1, got {si}")
    stop_ids = sp.get("stop_token_ids")
    if stop_ids is not None:
        if not isinstance(stop_ids, list):
            raise InvalidRequest(f"{where}.stop_token_ids must be a list of token ids")
        check_token_ids(stop_ids, vocab_size, f"{where}.stop_token_ids")
    bias = sp.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, Mapping):
            raise InvalidRequest(f"{where}.logit_bias must be an object of token id -> number")
        for k, v in bias.items():
            if not _is_real(v):
                raise InvalidRequest(f"{where}.logit_bias[{k!r}] must be a number, got {v!r}")
    custom = sp.get("custom_params")
    if custom is not None and not isinstance(custom, Mapping):
        raise InvalidRequest(f"{where}.custom_params must be an object, got {_kind(custom)}")


def check_token_ids(ids, vocab_size: int, where: str) -> None:
    """``ids`` is a flat list of token ids inside ``[0, vocab_size)``."""
    for i, t in enumerate(ids):
        if not _is_int(t):
            raise InvalidRequest(f"{where}[{i}] must be a token id (an integer), got {t!r}")
        if not 0 <= t < vocab_size:
            raise InvalidRequest(
                f"{where}[{i}] = {t} is outside the vocabulary [0, {vocab_size})"
            )


def check_request(obj, *, known: Iterable[str], vocab_size: int) -> None:
    """A ``GenerateReqInput`` as the HTTP layer built it, before SGLang normalizes it."""
    sp = getattr(obj, "sampling_params", None)
    if isinstance(sp, list):
        if not sp:
            raise InvalidRequest("sampling_params must not be an empty list")
        for i, one in enumerate(sp):
            check_sampling_params(one, known=known, vocab_size=vocab_size,
                                  where=f"sampling_params[{i}]")  # fmt: skip
    else:
        check_sampling_params(sp, known=known, vocab_size=vocab_size, where="sampling_params")
    text = getattr(obj, "text", None)
    if isinstance(text, list) and not text:
        raise InvalidRequest("text must not be an empty list")
    ids = getattr(obj, "input_ids", None)
    if ids is None:
        return
    if not isinstance(ids, list) or not ids:
        raise InvalidRequest("input_ids must be a non-empty list of token ids (or of lists)")
    if isinstance(ids[0], list):
        for i, one in enumerate(ids):
            if not isinstance(one, list) or not one:
                raise InvalidRequest(f"input_ids[{i}] must be a non-empty list of token ids")
            check_token_ids(one, vocab_size, f"input_ids[{i}]")
    else:
        check_token_ids(ids, vocab_size, "input_ids")


def _int_not_bool(annotation) -> bool:
    """``annotation`` accepts an int but not a bool (``Optional[int]``, ``Union[int, List]``)."""
    import typing

    if annotation is bool:
        return False
    if annotation is int:
        return True
    args = typing.get_args(annotation)
    return bool(args) and bool not in args and any(_int_not_bool(a) for a in args)


def bools_for_ints(body, model_fields: Mapping) -> list[str]:
    """Top-level fields of a JSON ``body`` that hold true/false where the pydantic model wants
    an integer (``model_fields``: ``Model.model_fields``, keyed by field name)."""
    if not isinstance(body, Mapping):
        return []
    bad = []
    for name, v in body.items():
        f = model_fields.get(name)
        if isinstance(v, bool) and f is not None and _int_not_bool(f.annotation):
            bad.append(name)
    return bad


def _sampling_fields() -> tuple[str, ...]:
    from sglang.srt.sampling.sampling_params import SamplingParams

    return SamplingParams.__struct_fields__


def _vocab_size(tokenizer_manager) -> int:
    return int(tokenizer_manager.model_config.vocab_size)


async def around_generate_request(original, self, obj, request=None, *args, **kwargs):
    from sglang.srt.managers.io_struct import GenerateReqInput

    try:
        if isinstance(obj, GenerateReqInput):
            check_request(obj, known=_sampling_fields(), vocab_size=_vocab_size(self))
        async for out in original(self, obj, request, *args, **kwargs):
            yield out
    except ValueError:
        # A streamed /generate has a background task that reads obj.is_single, which only
        # normalize_batch_and_arguments sets: a body refused before it would end that task in
        # an AttributeError traceback (http_server.py:950, tokenizer_manager.py:2296).
        if not hasattr(obj, "is_single"):
            obj.is_single = not isinstance(getattr(obj, "rid", None), list)
        raise


def before_validate_one_request(self, obj, input_ids, *args, **kwargs):
    from sglang.srt.managers.io_struct import GenerateReqInput

    if isinstance(obj, GenerateReqInput) and getattr(obj, "input_embeds", None) is None:
        if input_ids is not None and not input_ids:
            raise InvalidRequest("the prompt is empty (no tokens)")
        if input_ids is not None:
            check_token_ids(input_ids, _vocab_size(self), "input_ids")
    return None


async def around_openai_handle_request(original, self, request, raw_request, *args, **kwargs):
    if raw_request is not None:
        try:
            body = await raw_request.json()  # parsed once already; starlette caches it
        except Exception:
            body = None
        bad = bools_for_ints(body, type(request).model_fields)
        if bad:
            return self.create_error_response(
                f"{bad[0]} must be an integer, got {str(body[bad[0]]).lower()}"
            )
    return await original(self, request, raw_request, *args, **kwargs)
