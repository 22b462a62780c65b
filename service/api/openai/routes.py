"""``/v1``: OpenAI's chat completions, completions and models, on alignserve's generation path.

HTTP only. Each body becomes the domain's ``GenerateCommand`` (route label ``/v1/...``) and runs
through ``Runtime.generations`` exactly as ``POST /generate`` does: the same planning, engines,
429 back-pressure, deadlines, cancellation on disconnect and metrics. What differs is the wire:
OpenAI's request fields, responses, ``chat.completion.chunk`` events ending in ``data: [DONE]``,
and OpenAI's error shape (``OpenAIRoute``). The alignment and language reports travel in an extra
``alignserve`` field, which the SDKs keep (``response.model_extra["alignserve"]``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ...domain.errors import DomainError
from ...domain.generation import GenerateCommand, Generation, Outcome
from ...engines.base import Message, completion_prompt
from ...runtime import Runtime
from ..auth import require
from ..deps import get_runtime
from ..routes_generate import response_of
from .errors import OpenAIError, OpenAIRoute, invalid, to_openai
from .extras import alignment_options
from .schemas import (
    AlignserveReport,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceDelta,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    FinishReason,
    ModelCard,
    ModelList,
    OpenAIErrorResponse,
    SamplingFields,
    Usage,
    error_payload,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

OPENAI_DEFAULT_TEMPERATURE = 1.0  # OpenAI's default; alignserve's own /generate defaults to greedy
_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": OpenAIErrorResponse} for c in (400, 401, 403, 404, 409, 429, 503, 504)
}
_STREAM = {"description": "with stream=true: Server-Sent Events, one JSON chunk per `data:` line, "
           "ending in `data: [DONE]`", "content": {"text/event-stream": {}}}


# ---- requests ----------------------------------------------------------------------------------


def _check_model(rt: Runtime, model: str) -> None:
    if model != rt.served_model_name:
        raise OpenAIError(404, f"The model '{model}' does not exist; this server serves "
                          f"'{rt.served_model_name}' (GET /v1/models)", param="model", code="model_not_found")


def _refuse_unsupported(bad: list[tuple[str, str]]) -> None:
    if bad:
        param, why = bad[0]
        raise invalid(why, param, code="unsupported_parameter")


def chat_messages(body: ChatCompletionRequest) -> list[Message]:
    """OpenAI messages as the engines take them, with /generate's conversation rules."""
    messages: list[Message] = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                               for m in body.messages]
    if messages[-1]["role"] != "user":
        raise invalid("the last message must be from the user", "messages")
    if any(m["role"] == "system" for m in messages[1:]):
        raise invalid("only the first message may be a system (or developer) message", "messages")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise invalid("messages need a non-empty user message", "messages")
    return messages


def command_of(body: SamplingFields, messages: list[Message], max_tokens: int | None, route: str) -> GenerateCommand:
    """The domain command for an OpenAI request (both extras forms read into one)."""
    options = alignment_options(body.alignserve, body.vllm_xargs)
    return GenerateCommand(
        messages=messages, profile=options.profile, max_tokens=max_tokens,
        temperature=OPENAI_DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, top_k=max(0, body.top_k or 0), seed=body.seed,
        stop=tuple(body.stop_list()), steer_strength=options.steer_strength, ignore_eos=body.ignore_eos,
        la_overrides=options.la, route=route)


async def _start(rt: Runtime, request: Request, body: SamplingFields, cmd: GenerateCommand) -> Generation:
    gens = rt.generations
    gen = await gens.plan(cmd)
    request.state.profile_label = gen.profile.name or "none"
    gens.submit(gen, stream=body.stream)
    return gen


# ---- responses ---------------------------------------------------------------------------------


def finish_reason(out: Outcome) -> FinishReason:
    return "length" if out.finish_reason == "length" else "stop"


def usage_of(out: Outcome) -> Usage:
    return Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                 total_tokens=out.prompt_tokens + out.completion_tokens)


def report_of(out: Outcome) -> AlignserveReport:
    native = response_of(out)  # /generate's report, so both APIs say the same
    return AlignserveReport(alignment=native.alignment, language=native.language, timings=native.timings,
                            principle_prompt_tokens=out.principle_prompt_tokens)


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


_DONE = b"data: [DONE]\n\n"


class ChunkTemplate:
    """A token chunk rendered once with a marker for its text, so each batch of tokens costs one
    ``json.dumps`` of the text instead of building and dumping a pydantic model (at hundreds of
    streams that was a sixth of the server's CPU per token). Bytes equal ``_data(payload)``."""

    _MARK = "\u0001alignserve-text\u0001"

    def __init__(self, payload: dict[str, Any]) -> None:
        mark = json.dumps(self._MARK, ensure_ascii=False)
        head, found, tail = _data(payload).partition(mark.encode())
        if not found or mark.encode() in tail:
            raise ValueError("the chunk must hold the text marker exactly once")
        self.head, self.tail = head, tail

    @classmethod
    def of(cls, build: Callable[[str], dict[str, Any]]) -> ChunkTemplate:
        """The template of ``build(text)``."""
        return cls(build(cls._MARK))

    def render(self, text: str) -> bytes:
        return self.head + json.dumps(text, ensure_ascii=False).encode() + self.tail


def _sse(rt: Runtime, gen: Generation, token_chunk: Callable[[str, bool], bytes],
         final_chunks: Callable[[Outcome, bool], list[dict[str, Any]]]) -> StreamingResponse:
    """The event stream of one generation: a chunk per batch of decoded text (all tokens waiting when
    the client is written to; the first when the first token is decoded, so a client's time to first
    token is the engine's), the chunk with
    ``finish_reason`` and the report, the usage chunk if asked, then ``[DONE]``. An error after the
    stream began is sent as ``data: {"error": {...}}``, which the SDK raises."""

    async def events() -> AsyncIterator[bytes]:
        first = True
        try:
            async for item in rt.generations.stream(gen):
                if isinstance(item, Outcome):
                    for chunk in final_chunks(item, first):
                        yield _data(chunk)
                    continue
                text = "".join(ev.text for ev in item)  # every token already decoded: one chunk
                if text:
                    yield token_chunk(text, first)
                    first = False
            yield _DONE
        except Exception as exc:
            err = to_openai(exc) if isinstance(exc, DomainError) else None
            if err is None:
                log.error("generation failed", exc_info=exc, extra={"request_id": gen.id})
                err = OpenAIError(500, "generation failed", type_="server_error", code="internal_error")
            yield _data(error_payload(err.message, err.type, err.param, err.code))

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Request-Id": gen.id})


# ---- routes ------------------------------------------------------------------------------------


@router.post("/chat/completions", response_model=ChatCompletion, responses={**_ERRORS, 200: _STREAM},
             dependencies=[Depends(require("generate"))])
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           rt: Runtime = Depends(get_runtime)) -> Any:
    """OpenAI's chat completion. Alignment per request: ``alignserve`` or ``vllm_xargs`` (extra_body)."""
    _check_model(rt, body.model)
    _refuse_unsupported(body.unsupported())
    cmd = command_of(body, chat_messages(body), body.token_limit(), "/v1/chat/completions")
    gen = await _start(rt, request, body, cmd)
    cid, created, model = f"chatcmpl-{gen.id}", int(time.time()), rt.served_model_name
    if not body.stream:
        out = await rt.generations.wait(gen, request.is_disconnected)
        return ChatCompletion(id=cid, created=created, model=model, usage=usage_of(out), alignserve=report_of(out),
                              choices=[ChatChoice(index=0, message=AssistantMessage(content=out.text),
                                                  finish_reason=finish_reason(out))])
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[ChunkChoice], **extra: Any) -> dict[str, Any]:
        return ChatCompletionChunk(id=cid, created=created, model=model, choices=choices,
                                   **extra).model_dump(mode="json")

    def token_payload(first: bool) -> Callable[[str], dict[str, Any]]:
        return lambda text: chunk([ChunkChoice(delta=ChoiceDelta(role="assistant" if first else None, content=text))])

    templates = {first: ChunkTemplate.of(token_payload(first)) for first in (True, False)}

    def token_chunk(text: str, first: bool) -> bytes:
        return templates[first].render(text)

    def final_chunks(out: Outcome, first: bool) -> list[dict[str, Any]]:
        delta = ChoiceDelta(role="assistant", content="") if first else ChoiceDelta()
        chunks = [chunk([ChunkChoice(delta=delta, finish_reason=finish_reason(out))], alignserve=report_of(out))]
        if include_usage:
            chunks.append(chunk([], usage=usage_of(out)))
        return chunks

    return _sse(rt, gen, token_chunk, final_chunks)


@router.post("/completions", response_model=Completion, responses={**_ERRORS, 200: _STREAM},
             dependencies=[Depends(require("generate"))])
async def completions(body: CompletionRequest, request: Request, rt: Runtime = Depends(get_runtime)) -> Any:
    """OpenAI's (legacy) text completion: the raw prompt is continued, as OpenAI's and vLLM's are (no
    chat template, no default system message; ``tokenizer(prompt)`` with its special tokens). Linear
    Alignment's principle stream puts the principle before the prompt as a leading paragraph
    (``placement`` has no effect); steering applies as on chats."""
    _check_model(rt, body.model)
    _refuse_unsupported(body.unsupported())
    cmd = command_of(body, completion_prompt(body.prompt_text()), body.max_tokens, "/v1/completions")
    gen = await _start(rt, request, body, cmd)
    cid, created, model = f"cmpl-{gen.id}", int(time.time()), rt.served_model_name
    if not body.stream:
        out = await rt.generations.wait(gen, request.is_disconnected)
        return Completion(id=cid, created=created, model=model, usage=usage_of(out), alignserve=report_of(out),
                          choices=[CompletionChoice(text=out.text, finish_reason=finish_reason(out))])
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[CompletionChoice], **extra: Any) -> dict[str, Any]:
        return Completion(id=cid, created=created, model=model, choices=choices, **extra).model_dump(mode="json")

    template = ChunkTemplate.of(lambda text: chunk([CompletionChoice(text=text, finish_reason=None)]))

    def token_chunk(text: str, first: bool) -> bytes:
        return template.render(text)

    def final_chunks(out: Outcome, first: bool) -> list[dict[str, Any]]:
        chunks = [chunk([CompletionChoice(text="", finish_reason=finish_reason(out))], alignserve=report_of(out))]
        if include_usage:
            chunks.append(chunk([], usage=usage_of(out)))
        return chunks

    return _sse(rt, gen, token_chunk, final_chunks)


def _card(rt: Runtime) -> ModelCard:
    engine = rt.engine
    return ModelCard(id=rt.served_model_name, created=int(time.time()),
                     root=engine.model_name if engine is not None else rt.settings.model,
                     max_model_len=engine.max_model_len if engine is not None else rt.settings.max_model_len)


@router.get("/models", response_model=ModelList, responses=_ERRORS, dependencies=[Depends(require("read"))])
async def list_models(rt: Runtime = Depends(get_runtime)) -> ModelList:
    """The one served model (listed while it loads too: /readyz says when it serves)."""
    return ModelList(data=[_card(rt)])


@router.get("/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS,
            dependencies=[Depends(require("read"))])
async def get_model(model_id: str, rt: Runtime = Depends(get_runtime)) -> ModelCard:
    _check_model(rt, model_id)
    return _card(rt)
