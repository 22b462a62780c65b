"""``POST /score``: score candidate responses to one prompt and rank them."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from ..reward.judge import rubric_for
from ..scheduling.worker import Overloaded, WorkerStopped
from .auth import require
from .errors import ApiError
from .routes_profiles import resolve_profile
from .schemas import ErrorResponse, ScoreRequest, ScoreResponse
from .services import Services, get_services, ready_worker

router = APIRouter(tags=["score"])
_ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": ErrorResponse} for c in (404, 413, 422, 429, 503, 504)}


@router.post("/score", response_model=ScoreResponse, responses=_ERRORS, dependencies=[Depends(require("score"))])
async def score(body: ScoreRequest, request: Request, services: Services = Depends(get_services)) -> ScoreResponse:
    worker, engine = ready_worker(services)
    resolved = await run_in_threadpool(resolve_profile, services, request, body.profile)
    spec, label, compiled = resolved.spec, resolved.label, resolved.compiled
    if body.method == "activation_rm" and compiled is None:
        raise ApiError(422, "profile_not_compiled",
                       "method 'activation_rm' needs a stored profile compiled from activation_rm examples")
    rubric = rubric_for(spec.principle if spec else None, body.rubric or (spec.rubric if spec else None))
    scorer = services.scorers.get(body.method)
    if scorer is None:
        raise ApiError(422, "unknown_method", f"scoring method {body.method!r} is not available")
    longest = max(body.responses, key=len)
    size = await run_in_threadpool(engine.prompt_size, [{"role": "user", "content": body.prompt + longest}], None)
    if size.plain + 128 >= engine.max_model_len:
        raise ApiError(413, "prompt_too_long",
                       f"prompt plus the longest response is about {size.plain} tokens; the model takes "
                       f"{engine.max_model_len}")
    try:
        fut = worker.submit_call(lambda eng: scorer.score(eng, body.prompt, list(body.responses), rubric, compiled))
    except Overloaded as exc:
        raise ApiError(429, "overloaded", f"server is busy ({exc}); retry later", headers={"Retry-After": "2"}) \
            from None
    except WorkerStopped as exc:
        raise ApiError(503, "shutting_down", str(exc)) from None
    try:
        scores = await asyncio.wait_for(fut, timeout=services.settings.request_timeout_s)
    except TimeoutError:
        raise ApiError(504, "timeout", "scoring timed out") from None
    for s in scores:
        services.metrics.scores.labels(body.method).observe(s)
    ranking = sorted(range(len(scores)), key=lambda i: -scores[i])
    return ScoreResponse(method=body.method, rubric=rubric, scores=scores, ranking=ranking, profile=label)
