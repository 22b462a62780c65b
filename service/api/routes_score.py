"""``POST /score``: score candidate responses to one prompt and rank them."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from ..reward.judge import rubric_for
from ..reward.ranked import MAX_RANKED_RESPONSES
from ..reward.reward_model import RewardModelRunner, rm_conversation
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
    if body.method == "reward_model":
        scores, rm = await _reward_model_scores(body, services)
        return _answer(services, body, scores, rubric=None, model=rm.name, profile=None)
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
    if body.method == "activation_rm" and compiled is not None and compiled.format == "ranked":
        if len(body.responses) > MAX_RANKED_RESPONSES:
            raise ApiError(422, "too_many_responses", f"a ranked profile compares every pair of responses; at most "
                           f"{MAX_RANKED_RESPONSES} responses, got {len(body.responses)}")
        longest = "\n".join(sorted(body.responses, key=len)[-2:])  # a ranked query shows two responses
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
    scores = await _wait(fut, services)
    return _answer(services, body, scores, rubric=rubric, model=None, profile=label)


def _ready_reward_model(services: Services) -> RewardModelRunner:
    if services.reward_model is not None:
        return services.reward_model
    state = services.reward_state
    if state == "loading":
        raise ApiError(503, "reward_model_loading", "the reward model is still loading", headers={"Retry-After": "5"})
    if state.startswith("failed"):
        raise ApiError(503, "reward_model_unavailable", f"the reward model {state}")
    raise ApiError(422, "no_reward_model", "no reward model is configured on this server (start it with "
                   "--reward-model embedded or a folder/hub id of a sequence-classification RM)")


async def _reward_model_scores(body: ScoreRequest, services: Services) -> tuple[list[float], RewardModelRunner]:
    if body.profile is not None or body.rubric is not None:
        raise ApiError(422, "not_applicable", "method 'reward_model' takes neither a rubric nor a profile")
    rm = _ready_reward_model(services)
    conversations = [rm_conversation(body.prompt, r) for r in body.responses]
    longest = max(conversations, key=lambda c: len(c[1]["content"]))
    n = await run_in_threadpool(rm.count_tokens, longest)
    if n > rm.max_length:
        raise ApiError(413, "prompt_too_long", f"prompt plus the longest response is {n} tokens; the reward "
                       f"model reads {rm.max_length}")
    try:
        fut = rm.submit(conversations)
    except Overloaded as exc:
        raise ApiError(429, "overloaded", f"reward model is busy ({exc}); retry later",
                       headers={"Retry-After": "2"}) from None
    return await _wait(fut, services), rm


async def _wait(fut: asyncio.Future[list[float]] | concurrent.futures.Future[list[float]],
                services: Services) -> list[float]:
    waitable = asyncio.wrap_future(fut) if isinstance(fut, concurrent.futures.Future) else fut
    try:
        return await asyncio.wait_for(waitable, timeout=services.settings.request_timeout_s)
    except TimeoutError:
        raise ApiError(504, "timeout", "scoring timed out") from None


def _answer(services: Services, body: ScoreRequest, scores: list[float], rubric: str | None, model: str | None,
            profile: str | None) -> ScoreResponse:
    for s in scores:
        if body.method == "reward_model":
            services.metrics.rewards.observe(s)
        else:
            services.metrics.scores.labels(body.method).observe(s)
    ranking = sorted(range(len(scores)), key=lambda i: -scores[i])
    return ScoreResponse(method=body.method, rubric=rubric, model=model, scores=scores, ranking=ranking,
                         profile=profile)
