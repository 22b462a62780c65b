"""``POST /score``: score candidate responses to one prompt and rank them (``service.domain.scoring``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ..domain.scoring import ScoreCommand
from ..runtime import Runtime
from .auth import require
from .deps import get_runtime
from .schemas import ErrorResponse, ScoreRequest, ScoreResponse

router = APIRouter(tags=["score"])
_ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": ErrorResponse} for c in (404, 409, 413, 422, 429, 503, 504)}


@router.post("/score", response_model=ScoreResponse, responses=_ERRORS, dependencies=[Depends(require("score"))])
async def score(body: ScoreRequest, request: Request, rt: Runtime = Depends(get_runtime)) -> ScoreResponse:
    out = await rt.scoring.score(ScoreCommand(prompt=body.prompt, responses=body.responses, method=body.method,
                                              rubric=body.rubric, profile=body.profile))
    request.state.profile_label = out.profile.name or "none"  # a resolved name only: bounded label values
    return ScoreResponse(method=out.method, rubric=out.rubric, model=out.model, scores=out.scores,
                         ranking=out.ranking, profile=out.profile.label)
