"""OpenAI's wire format for ``/v1``: chat completions, completions, models, errors — plus the
``alignserve`` extras a client sends through the SDK's ``extra_body``.

Request models forbid unknown fields, as OpenAI does ("Unrecognized request argument"): a typo in
a sampling parameter must not silently change nothing. Fields that OpenAI or vLLM define but
alignserve cannot honour are declared and refused with a clear 400 when set to a non-default value
(see ``unsupported``), so clients that always send their defaults (vLLM's benchmark client sends
``repetition_penalty: 1.0`` and ``logprobs: null``) still work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..schemas import MAX_TEXT, AlignmentReport, LanguageInfo, ProfileSpec, Strict, Timings

MAX_STOP = 8
MAX_MESSAGES = 256


# ---- the alignserve extras -------------------------------------------------------------------


class LAOverrides(Strict):
    """Per-request overrides of the profile's Linear Alignment settings (see ``LASettings``); the
    fields left out keep the profile's values. Bounds are those of ``LASettings``."""

    enabled: bool | None = None
    strength: float | None = Field(None, ge=0.0, le=100.0, description="fixed ratio r")
    adaptive: bool | None = None
    kl_budget: float | None = Field(None, ge=1e-6, le=10.0, description="adaptive: nats per token")
    max_strength: float | None = Field(None, ge=0.0, le=100.0, description="adaptive: upper clip on r")
    plausibility_top_p: float | None = Field(None, gt=0.0, le=1.0)
    plausibility_temperature: float | None = Field(None, ge=0.01, le=10.0)
    placement: Literal["system", "user"] | None = None
    sampling: Literal["request", "authors"] | None = Field(
        None, description="'authors': sample as Linear Alignment's official code (one temperature for both)")


class AlignserveOptions(Strict):
    """Per-request alignment, sent as ``extra_body={"alignserve": {...}}`` with the OpenAI SDK."""

    profile: str | ProfileSpec | None = Field(
        None, description="a stored profile ('name' or 'name@version') or an inline profile")
    steer_strength: float | None = Field(
        None, ge=-50.0, le=50.0, description="override the profile's activation steering strength (0 = off)")
    la: LAOverrides | None = Field(None, description="override the profile's Linear Alignment settings")


XargValue = str | int | float | bool

VLLM_XARGS_DOC = (
    "vLLM's flat per-request extras (extra_body={'vllm_xargs': {...}}). alignserve reads "
    "'alignserve_profile' (a stored 'name', 'name@version', or an inline profile as a JSON string), "
    "'alignserve_steer_strength' and 'alignserve_la_<field>' for each Linear Alignment setting "
    "(strength, adaptive, kl_budget, max_strength, plausibility_top_p, plausibility_temperature, "
    "placement, enabled); values may be strings. Other keys are refused. Give either this or 'alignserve'.")


class StreamOptions(Strict):
    include_usage: bool = Field(False, description="send one more chunk, before [DONE], carrying usage "
                                "(its choices are empty)")


class ResponseFormat(Strict):
    type: Literal["text"] = Field("text", description="only plain text: structured output is not supported")


class SamplingFields(Strict):
    """Fields the chat and completion requests share."""

    model: str = Field(..., min_length=1, max_length=256, description="the served model id (GET /v1/models)")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="default 1 (OpenAI's); 0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=100_000, description="vLLM extension; 0 or -1 = off")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="accepted only as 0 (not supported)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} strings of 1-64 characters")
    n: int = Field(1, ge=1, le=128, description="choices per request; only 1 (see the README)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="accepted only as 0")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="accepted only as 0")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="vLLM; accepted only as 1")
    logit_bias: dict[str, float] | None = Field(None, description="accepted only empty")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")
    ignore_eos: bool = Field(False, description="vLLM extension for benchmarks: decode exactly max_tokens")
    alignserve: AlignserveOptions | None = Field(None, description="alignserve's alignment extras")
    vllm_xargs: dict[str, XargValue] | None = Field(None, description=VLLM_XARGS_DOC)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop strings must be 1-64 characters")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def base_unsupported(self) -> list[tuple[str, str]]:
        """(param, why) for each field set to a value alignserve cannot honour."""
        bad: list[tuple[str, str]] = []
        if self.n != 1:
            bad.append(("n", "n > 1 is not supported: send one request per choice (each is decoded, aligned and "
                        "scheduled on its own, so nothing is lost)"))
        for name in ("frequency_penalty", "presence_penalty", "min_p"):
            if getattr(self, name) not in (None, 0, 0.0):
                bad.append((name, f"{name} is not supported (only 0)"))
        if self.repetition_penalty not in (None, 1.0):
            bad.append(("repetition_penalty", "repetition_penalty is not supported (only 1)"))
        if self.logit_bias:
            bad.append(("logit_bias", "logit_bias is not supported"))
        return bad


# ---- chat completions ----------------------------------------------------------------------------


class TextPart(Strict):
    type: Literal["text"]
    text: str = Field(..., max_length=MAX_TEXT)


class ChatMessageIn(Strict):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        ..., description="'developer' is read as 'system'")
    content: str | list[TextPart] = Field(..., description="text, or a list of text parts (joined)")
    name: str | None = Field(None, max_length=64, description="accepted and ignored")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    @field_validator("content")
    @classmethod
    def _bounded(cls, v: str | list[TextPart]) -> str | list[TextPart]:
        size = len(v) if isinstance(v, str) else sum(len(p.text) for p in v)
        if size > MAX_TEXT:
            raise ValueError(f"at most {MAX_TEXT} characters")
        return v


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI for max_completion_tokens; "
                                   "either works (default: min(128, the server's limit))")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="accepted only false")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="accepted only 0")
    response_format: ResponseFormat | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        bad = self.base_unsupported()
        if self.logprobs:
            bad.append(("logprobs", "logprobs are not supported"))
        if self.top_logprobs:
            bad.append(("top_logprobs", "logprobs are not supported"))
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):
            bad.append(("max_tokens", "max_tokens and max_completion_tokens differ: give one"))
        return bad

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AlignserveReport(BaseModel):
    """What alignserve adds to each response (SDKs keep unknown fields: ``resp.model_extra``)."""

    alignment: AlignmentReport
    language: LanguageInfo
    timings: Timings
    principle_prompt_tokens: int | None = Field(
        None, description="prompt tokens of the principle-conditioned stream (Linear Alignment decodes two)")


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    alignserve: AlignserveReport


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    alignserve: AlignserveReport | None = Field(None, description="on the chunk that carries finish_reason")


# ---- completions -------------------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(..., description="one prompt (a list of one string is accepted); the raw "
                                    "text is continued (no chat template), as OpenAI's and vLLM's completions")
    max_tokens: int | None = Field(16, ge=1, description="default 16, as OpenAI's")
    echo: bool = Field(False, description="accepted only false")
    logprobs: int | None = Field(None, ge=0, le=5, description="accepted only null or 0")
    best_of: int | None = Field(None, ge=1, le=20, description="accepted only 1")
    suffix: str | None = Field(None, max_length=MAX_TEXT, description="accepted only empty")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        texts = [v] if isinstance(v, str) else v
        if len(texts) != 1:
            raise ValueError("give exactly one prompt (batched prompts are not supported: send one request each)")
        if not texts[0].strip():
            raise ValueError("prompt must not be empty")
        if len(texts[0]) > MAX_TEXT:
            raise ValueError(f"at most {MAX_TEXT} characters")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def unsupported(self) -> list[tuple[str, str]]:
        bad = self.base_unsupported()
        if self.echo:
            bad.append(("echo", "echo is not supported"))
        if self.logprobs:
            bad.append(("logprobs", "logprobs are not supported"))
        if self.suffix:
            bad.append(("suffix", "suffix (insertion) is not supported"))
        if self.best_of not in (None, 1):
            bad.append(("best_of", "best_of > 1 is not supported"))
        return bad


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    alignserve: AlignserveReport | None = None


# ---- models ------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "alignserve"
    root: str = Field(..., description="what the server loaded (a folder or hub id): vLLM's benchmark client "
                      "loads its tokenizer from here when it is not told a model")
    parent: str | None = None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- errors ------------------------------------------------------------------------------------


class OpenAIErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: str = Field(..., description="OpenAI's class: invalid_request_error, authentication_error, "
                      "permission_error, rate_limit_error, server_error")
    param: str | None = Field(None, description="the request field at fault, when one is")
    code: str | None = Field(None, description="alignserve's specific error type (e.g. model_not_found, "
                             "profile_not_found, overloaded, context_length_exceeded)")


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


def error_payload(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return OpenAIErrorResponse(error=OpenAIErrorBody(message=message, type=type_, param=param,
                                                     code=code)).model_dump()
