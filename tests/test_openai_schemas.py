"""The /v1 wire edge without a model: extras parsing, OpenAI error mapping, request refusals."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.api.openai.errors import OpenAIError, from_status, param_of
from service.api.openai.extras import AlignmentOptions, alignment_options
from service.api.openai.schemas import (
    AlignserveOptions,
    ChatCompletionRequest,
    CompletionRequest,
    LAOverrides,
)
from service.api.schemas import LASettings, ProfileSpec
from service.config import Settings, served_model_name

MSG = [{"role": "user", "content": "hi"}]


def test_both_extras_forms_read_into_one() -> None:
    typed = alignment_options(AlignserveOptions.model_validate(
        {"profile": "concise@2", "steer_strength": 1.5, "la": {"strength": 0.5, "adaptive": True}}), None)
    flat = alignment_options(None, {"alignserve_profile": "concise@2", "alignserve_steer_strength": "1.5",
                                    "alignserve_la_strength": "0.5", "alignserve_la_adaptive": "true"})
    assert typed == flat == AlignmentOptions("concise@2", 1.5, {"strength": 0.5, "adaptive": True})


def test_inline_profile_through_xargs_is_json() -> None:
    spec = {"principle": "Be brief.", "la": {"strength": 2.0}}
    typed = alignment_options(AlignserveOptions.model_validate({"profile": spec}), None)
    flat = alignment_options(None, {"alignserve_profile": json.dumps(spec)})
    assert isinstance(flat.profile, ProfileSpec) and typed == flat
    assert alignment_options(None, None) == alignment_options(AlignserveOptions(), None) == AlignmentOptions()


@pytest.mark.parametrize(("xargs", "param", "needle"), [
    ({"temperature_boost": 1}, "vllm_xargs.temperature_boost", "start with 'alignserve_'"),
    ({"alignserve_strength": 1}, "vllm_xargs.alignserve_strength", "known: alignserve_profile"),
    ({"alignserve_profile": "p", "alignserve_la_strength": "abc"}, "vllm_xargs.alignserve_la_strength",
     "valid number"),
    ({"alignserve_profile": "p", "alignserve_la_strength": 500}, "vllm_xargs.alignserve_la_strength", "100"),
    ({"alignserve_profile": "p", "alignserve_steer_strength": 99}, "vllm_xargs.alignserve_steer_strength", "50"),
    ({"alignserve_profile": "{not json"}, "vllm_xargs.alignserve_profile", "not valid JSON"),
    ({"alignserve_profile": '{"principle": "x", "bogus": 1}'}, "vllm_xargs.alignserve_profile", "bogus"),
    ({"alignserve_profile": 3}, "vllm_xargs.alignserve_profile", "JSON string"),
    ({"alignserve_la_strength": 1}, "alignserve.la", "need a profile"),
])
def test_bad_xargs_name_the_key(xargs: dict, param: str, needle: str) -> None:
    with pytest.raises(OpenAIError) as info:
        alignment_options(None, xargs)
    assert info.value.status == 400 and info.value.param == param and needle in info.value.message


def test_one_form_at_a_time() -> None:
    with pytest.raises(OpenAIError, match="not both"):
        alignment_options(AlignserveOptions(profile="a"), {"alignserve_profile": "a"})
    with pytest.raises(OpenAIError, match="need a profile"):
        alignment_options(AlignserveOptions.model_validate({"la": {"strength": 1}}), None)


def test_la_overrides_cover_every_la_setting() -> None:
    assert set(LAOverrides.model_fields) == set(LASettings.model_fields)
    with pytest.raises(ValidationError):
        LAOverrides.model_validate({"strength": -1})


@pytest.mark.parametrize(("status", "kind", "out_status", "out_type", "code"), [
    (422, "invalid_request", 400, "invalid_request_error", "invalid_request"),
    (413, "prompt_too_long", 400, "invalid_request_error", "context_length_exceeded"),
    (401, "unauthorized", 401, "authentication_error", "invalid_api_key"),
    (403, "forbidden", 403, "permission_error", "forbidden"),
    (404, "profile_not_found", 404, "invalid_request_error", "profile_not_found"),
    (409, "profile_incompatible", 409, "invalid_request_error", "profile_incompatible"),
    (429, "overloaded", 429, "rate_limit_error", "overloaded"),
    (503, "model_loading", 503, "server_error", "model_loading"),
    (504, "timeout", 504, "server_error", "timeout"),
])
def test_status_mapping(status: int, kind: str, out_status: int, out_type: str, code: str) -> None:
    err = from_status(status, kind, "m", headers={"Retry-After": "2"})
    body = json.loads(err.response().body)
    assert err.response().status_code == out_status
    assert body == {"error": {"message": "m", "type": out_type, "param": None, "code": code}}
    assert err.response().headers["retry-after"] == "2"


def test_param_of_drops_body_and_union_tags() -> None:
    assert param_of(("body", "messages", 0, "content", "str")) == "messages[0].content"
    assert param_of(("body", "alignserve", "profile", "ProfileSpec", "la", "strength")) == \
        "alignserve.profile.la.strength"
    assert param_of(("body", "vllm_xargs", "Weird-Key", "int")) == "vllm_xargs.Weird-Key"
    assert param_of(("body",)) is None


def test_unsupported_fields_are_named() -> None:
    base = {"model": "m", "messages": MSG}
    assert ChatCompletionRequest.model_validate(base).unsupported() == []
    # what vLLM's benchmark client always sends is fine
    bench = CompletionRequest.model_validate({"model": "m", "prompt": "p", "repetition_penalty": 1.0,
                                              "logprobs": None, "max_tokens": 8, "stream": True,
                                              "stream_options": {"include_usage": True}, "ignore_eos": True})
    assert bench.unsupported() == []
    for field, value in [("n", 2), ("presence_penalty", 0.5), ("frequency_penalty", 1), ("logprobs", True),
                         ("top_logprobs", 2), ("repetition_penalty", 1.1), ("logit_bias", {"1": 2.0}),
                         ("min_p", 0.1)]:
        bad = ChatCompletionRequest.model_validate({**base, field: value}).unsupported()
        assert [p for p, _ in bad] == [field], field
    clash = ChatCompletionRequest.model_validate({**base, "max_tokens": 4, "max_completion_tokens": 5})
    assert [p for p, _ in clash.unsupported()] == ["max_tokens"]
    assert ChatCompletionRequest.model_validate({**base, "max_completion_tokens": 5}).token_limit() == 5


@pytest.mark.parametrize("prompt", [["a", "b"], [], "  ", [""]])
def test_completion_takes_one_prompt(prompt: object) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})


def test_chat_content_parts_and_unknown_fields() -> None:
    r = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                  {"type": "text", "text": "b"}]}]})
    assert r.messages[0].text() == "ab"
    with pytest.raises(ValidationError, match="Extra inputs"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "tools": []})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "stop": ["x"] * 9})


def test_served_model_name_is_short() -> None:
    assert served_model_name(Settings(model="embedded:qwen2.5-coder-0.5b-instruct")) == "qwen2.5-coder-0.5b-instruct"
    assert served_model_name(Settings(model="/srv/models/Qwen2-7B/")) == "Qwen2-7B"
    assert served_model_name(Settings(model="Qwen/Qwen2.5-0.5B-Instruct")) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert served_model_name(Settings(model="/x/y", served_model_name="prod-chat")) == "prod-chat"
