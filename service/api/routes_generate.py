"""``POST /generate``: one completion, aligned per request, as JSON or Server-Sent Events.

HTTP only: the body becomes a ``GenerateCommand``; planning, admission, deadlines, cancellation and
the report are the domain's (``service.domain.generation``)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ..domain.errors import DomainError
from ..domain.generation import GenerateCommand, Outcome
from ..engines.base import Message, TokenEvent
from ..runtime import Runtime
from .auth import require
from .deps import get_runtime
from .schemas import (
    AlignmentReport,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    LanguageInfo,
    Timings,
    Usage,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["generate"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorResponse} for c in (404, 409, 413, 422, 429, 503, 504)
}


def command_of(body: GenerateRequest) -> GenerateCommand:
    if body.messages is not None:
        messages: list[Message] = [{"role": m.role, "content": m.content} for m in body.messages]
    else:
        assert body.prompt is not None
        messages = [{"role": "user", "content": body.prompt}]
    return GenerateCommand(messages=messages, profile=body.profile, max_tokens=body.max_tokens,
                           temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, seed=body.seed,
                           stop=tuple(body.stop), steer_strength=body.steer_strength, route="/generate")


def response_of(out: Outcome) -> GenerateResponse:
    lang = out.language
    return GenerateResponse(
        id=out.id, model=out.model, text=out.text, finish_reason=out.finish_reason,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=out.prompt_tokens, principle_prompt_tokens=out.principle_prompt_tokens,
                    completion_tokens=out.completion_tokens),
        timings=Timings(queue_s=out.queue_s, first_token_s=out.first_token_s, total_s=out.total_s,
                        tokens_per_s=out.tokens_per_s),
        alignment=AlignmentReport.model_validate(out.alignment, from_attributes=True),
        language=LanguageInfo(prompt=lang.prompt, answer=lang.answer, match=lang.match,
                              answer_scripts=lang.answer_scripts),
    )


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def token_event(ev: TokenEvent) -> bytes:
    """``_sse("token", {...})`` of one token, formatted directly (one per token on every stream)."""
    return (f'event: token\ndata: {{"text": {json.dumps(ev.text, ensure_ascii=False)}, "index": {int(ev.index)}, '
            f'"token_id": {int(ev.token_id)}}}\n\n').encode()


@router.post("/generate", response_model=GenerateResponse, responses=_ERRORS,
             dependencies=[Depends(require("generate"))])
async def generate(body: GenerateRequest, request: Request, rt: Runtime = Depends(get_runtime)) -> Any:
    gens = rt.generations
    gen = await gens.plan(command_of(body))
    request.state.profile_label = gen.profile.name or "none"
    gens.submit(gen, stream=body.stream)
    if not body.stream:
        return response_of(await gens.wait(gen, request.is_disconnected))

    async def events() -> AsyncIterator[bytes]:
        yield _sse("start", {"id": gen.id})
        try:
            async for item in gens.stream(gen):
                if isinstance(item, Outcome):
                    yield _sse("done", response_of(item).model_dump(mode="json"))
                    continue
                chunk = b"".join(token_event(ev) for ev in item if ev.text)
                if chunk:
                    yield chunk
        except DomainError as exc:
            yield _sse("error", {"type": exc.code, "message": exc.message})
        except Exception as exc:
            log.error("generation failed", exc_info=exc, extra={"request_id": gen.id})
            yield _sse("error", {"type": "internal_error", "message": "generation failed"})

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Request-Id": gen.id})
