"""``POST /generate``: one completion, aligned per request, as JSON or Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..alignment.sampling import SamplingParams
from ..alignment.spec import AlignmentSpec
from ..domain.planning import alignment_for
from ..engines.base import GenerationRequest, GenerationResult, Message, TokenEvent
from ..scheduling.health import EngineUnavailable
from ..scheduling.worker import Overloaded, WorkerStopped
from .auth import require
from .errors import ApiError
from .routes_profiles import resolve_profile
from .schemas import (
    AlignmentReport,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    LanguageInfo,
    ProfileSpec,
    Timings,
    Usage,
)
from .services import Services, get_services, ready_worker

log = logging.getLogger(__name__)
router = APIRouter(tags=["generate"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorResponse} for c in (404, 413, 422, 429, 503, 504)
}


def _last_user(messages: list[Message]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _report(spec: ProfileSpec | None, label: str | None, alignment: AlignmentSpec,
            result: GenerationResult | None) -> AlignmentReport:
    la = alignment.la
    heads = len(alignment.steering)
    steer = alignment.steering[0].scale if heads else None
    method = "+".join(m for m, on in (("linear_alignment", la is not None), ("activation_steering", heads > 0)) if on)
    if la is None:
        return AlignmentReport(method=method or "none", profile=label,  # type: ignore[arg-type]
                               steered_heads=heads, steer_strength=steer)
    return AlignmentReport(
        method=method, profile=label, principle=la.principle,  # type: ignore[arg-type]
        strength_mode="adaptive" if la.adaptive else "fixed",
        mean_strength=result.mean_strength if result else None, steered_heads=heads, steer_strength=steer,
    )


class _Tracker:
    """Collects per-token timing in the engine thread and forwards events to a streaming client."""

    def __init__(self, services: Services, arrived: float, loop: asyncio.AbstractEventLoop,
                 sink: asyncio.Queue[TokenEvent | None] | None) -> None:
        self.metrics = services.metrics
        self.arrived, self.loop, self.sink = arrived, loop, sink
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, ev: TokenEvent) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            self.metrics.ttft.observe(now - self.arrived)
        elif self.last is not None:
            self.metrics.itl.observe(now - self.last)
        self.last = now
        if self.sink is not None:
            self.loop.call_soon_threadsafe(self.sink.put_nowait, ev)


def _messages(body: GenerateRequest) -> list[Message]:
    if body.messages is not None:
        return [{"role": m.role, "content": m.content} for m in body.messages]
    assert body.prompt is not None
    return [{"role": "user", "content": body.prompt}]


async def _prepare(body: GenerateRequest, request: Request, services: Services) -> tuple[
        GenerationRequest, ProfileSpec | None, str | None, float]:
    settings = services.settings
    max_tokens = body.max_tokens if body.max_tokens is not None else min(128, settings.max_tokens_limit)
    if max_tokens > settings.max_tokens_limit:
        raise ApiError(422, "invalid_request",
                       f"max_tokens: must be at most {settings.max_tokens_limit} on this server")
    _, engine = ready_worker(services)
    resolved = await run_in_threadpool(resolve_profile, services, request, body.profile)
    spec, label = resolved.spec, resolved.label
    messages = _messages(body)
    prompt_language = None
    if spec is not None and spec.enforce_language:
        prompt_language = await run_in_threadpool(services.language.detect, _last_user(messages))
    alignment = alignment_for(spec, prompt_language, resolved.compiled, body.steer_strength)
    la = alignment.la
    size = await run_in_threadpool(engine.prompt_size, messages, la.principle if la else None,
                                   la.placement if la else "system")
    if size.longest >= engine.max_model_len:
        raise ApiError(413, "prompt_too_long",
                       f"prompt is {size.longest} tokens (with the principle); this model takes at most "
                       f"{engine.max_model_len - 1} prompt tokens")
    sampling = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, seed=body.seed, stop=tuple(body.stop))
    req = GenerationRequest(request_id=f"gen-{uuid.uuid4().hex[:16]}", messages=messages,
                            sampling=sampling, alignment=alignment)
    return req, spec, label, time.perf_counter()


def _submit(services: Services, req: GenerationRequest) -> asyncio.Future[GenerationResult]:
    worker, _ = ready_worker(services)

    def count(fut: asyncio.Future[GenerationResult]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            services.metrics.finished.labels(fut.result().finish_reason).inc()

    try:
        fut = worker.submit_generate(req)
        fut.add_done_callback(count)
        return fut
    except Overloaded as exc:
        raise ApiError(429, "overloaded", f"server is busy ({exc}); retry later",
                       headers={"Retry-After": "2"}) from None
    except WorkerStopped as exc:
        raise ApiError(503, "shutting_down", str(exc)) from None


def _response(services: Services, req: GenerationRequest, result: GenerationResult, spec: ProfileSpec | None,
              label: str | None, arrived: float, tracker: _Tracker) -> GenerateResponse:
    total = time.perf_counter() - arrived
    first = (tracker.first - arrived) if tracker.first is not None else total
    queue_s = max(0.0, total - result.total_s)
    m = services.metrics
    m.queue_time.observe(queue_s)
    m.prompt_tokens.inc(result.prompt_tokens)
    m.generated_tokens.labels(_report(spec, label, req.alignment, None).method).inc(result.completion_tokens)
    if req.alignment.la is not None and result.mean_strength is not None:
        m.la_strength.labels("adaptive" if req.alignment.la.adaptive else "fixed").observe(result.mean_strength)
    decode_s = max(result.total_s - result.first_token_s, 1e-9)
    tps = (result.completion_tokens - 1) / decode_s if result.completion_tokens > 1 else 0.0
    lang = services.language.compare(_last_user(req.messages), result.text)
    profile_label = label.split("@")[0] if label else "none"
    m.language_checks.labels(profile_label).inc()
    mismatch = m.language_mismatch.labels(profile_label)  # exists at 0, so mismatch/checks is defined
    if not lang.match:
        mismatch.inc()
    engine_name = services.engine.model_name if services.engine else ""
    return GenerateResponse(
        id=req.request_id, model=engine_name, text=result.text, finish_reason=result.finish_reason,
        usage=Usage(prompt_tokens=result.prompt_tokens, principle_prompt_tokens=result.principle_prompt_tokens,
                    completion_tokens=result.completion_tokens),
        timings=Timings(queue_s=queue_s, first_token_s=first, total_s=total, tokens_per_s=tps),
        alignment=_report(spec, label, req.alignment, result),
        language=LanguageInfo(prompt=lang.prompt, answer=lang.answer, match=lang.match,
                              answer_scripts=lang.answer_scripts),
    )


async def _await_result(request: Request, services: Services, req: GenerationRequest,
                        fut: asyncio.Future[GenerationResult]) -> GenerationResult:
    """Wait for the engine, cancelling the work when the client leaves or the deadline passes."""
    deadline = time.perf_counter() + services.settings.request_timeout_s
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            req.cancelled.set()
            raise ApiError(504, "timeout", f"generation exceeded {services.settings.request_timeout_s:g}s")
        done, _ = await asyncio.wait({fut}, timeout=min(0.25, remaining))
        if done:
            return fut.result()
        if await request.is_disconnected():
            req.cancelled.set()
            log.info("client disconnected; generation cancelled", extra={"request_id": req.request_id})
            raise ApiError(499, "client_closed", "client closed the connection")


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.post("/generate", response_model=GenerateResponse, responses=_ERRORS,
             dependencies=[Depends(require("generate"))])
async def generate(body: GenerateRequest, request: Request, services: Services = Depends(get_services)) -> Any:
    req, spec, label, arrived = await _prepare(body, request, services)
    loop = asyncio.get_running_loop()
    if not body.stream:
        tracker = _Tracker(services, arrived, loop, None)
        req.on_token = tracker
        result = await _await_result(request, services, req, _submit(services, req))
        return _response(services, req, result, spec, label, arrived, tracker)

    sink: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
    tracker = _Tracker(services, arrived, loop, sink)
    req.on_token = tracker
    fut = _submit(services, req)
    fut.add_done_callback(lambda _f: sink.put_nowait(None))

    async def events() -> AsyncIterator[bytes]:
        deadline = arrived + services.settings.request_timeout_s
        try:
            yield _sse("start", {"id": req.request_id})
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    req.cancelled.set()
                    yield _sse("error", {"type": "timeout", "message": "generation timed out"})
                    return
                try:
                    ev = await asyncio.wait_for(sink.get(), timeout=remaining)
                except TimeoutError:
                    continue
                if ev is None:
                    break
                if ev.text:
                    yield _sse("token", {"text": ev.text, "index": ev.index, "token_id": ev.token_id})
            exc = fut.exception()
            if exc is not None:
                log.error("generation failed", exc_info=exc, extra={"request_id": req.request_id})
                if isinstance(exc, EngineUnavailable):
                    yield _sse("error", {"type": exc.error_type, "message": str(exc)})
                else:
                    yield _sse("error", {"type": "internal_error", "message": "generation failed"})
                return
            resp = _response(services, req, fut.result(), spec, label, arrived, tracker)
            yield _sse("done", resp.model_dump(mode="json"))
        finally:
            if not fut.done():  # the client went away mid-stream: stop decoding for it
                req.cancelled.set()
                log.info("stream closed early; generation cancelled", extra={"request_id": req.request_id})

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Request-Id": req.request_id})
