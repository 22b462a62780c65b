"""``POST /v1/rerank``: rank documents for a query in the rerank shape vLLM, Jina and Cohere share,
scored by ``/score``'s registry (``service.domain.scoring``).

The default method is the English reward model (a scalar reward per (query, document) as prompt
and response, any language); ``alignserve.method`` picks the served LLM as a judge or a compiled
profile's Activation RM instead, exactly as ``/score`` does. ``relevance_score`` is that method's
score (a reward is unbounded; the judge's is P("Yes") in [0, 1]); results are sorted best first.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ...domain.scoring import ScoreCommand
from ...runtime import Runtime
from ..auth import require
from ..deps import get_runtime
from ..schemas import MAX_PRINCIPLE, MAX_TEXT, ProfileSpec, Strict
from .errors import OpenAIError, OpenAIRoute
from .schemas import OpenAIErrorResponse

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)
_ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": OpenAIErrorResponse} for c in (400, 401, 403, 404, 409,
                                                                                         429, 503, 504)}


class RerankOptions(Strict):
    method: Literal["reward_model", "judge", "activation_rm"] = Field(
        "reward_model", description="as /score's 'method'; default the English reward model")
    rubric: str | None = Field(None, max_length=MAX_PRINCIPLE, description="judge / activation_rm")
    profile: str | ProfileSpec | None = Field(None, description="judge / activation_rm (activation_rm: stored)")


class RerankRequest(Strict):
    model: str = Field(..., min_length=1, max_length=256, description="the served model id (GET /v1/models)")
    query: str = Field(..., min_length=1, max_length=MAX_TEXT)
    documents: list[str] = Field(..., min_length=1, max_length=64)
    top_n: int = Field(0, ge=0, le=64, description="keep the best n results; 0 = all")
    return_documents: bool = Field(True, description="echo each document's text in its result")
    alignserve: RerankOptions | None = None


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(..., description="the document's position in the request")
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str
    model: str = Field(..., description="the model that scored (the reward model's name, or the served id)")
    results: list[RerankResult]
    alignserve: dict[str, str | None] = Field(..., description="method, rubric and profile used")


@router.post("/rerank", response_model=RerankResponse, responses=_ERRORS, dependencies=[Depends(require("score"))])
async def rerank(body: RerankRequest, request: Request, rt: Runtime = Depends(get_runtime)) -> RerankResponse:
    if body.model != rt.served_model_name:
        raise OpenAIError(404, f"The model '{body.model}' does not exist; this server serves "
                          f"'{rt.served_model_name}' (GET /v1/models)", param="model", code="model_not_found")
    if any(len(d) > MAX_TEXT for d in body.documents):
        raise OpenAIError(400, f"each document must be at most {MAX_TEXT} characters", param="documents",
                          code="invalid_request")
    opts = body.alignserve or RerankOptions()
    out = await rt.scoring.score(ScoreCommand(prompt=body.query, responses=body.documents, method=opts.method,
                                              rubric=opts.rubric, profile=opts.profile, route="/v1/rerank"))
    request.state.profile_label = out.profile.name or "none"
    keep = out.ranking[: body.top_n] if body.top_n else out.ranking
    results = [RerankResult(index=i, relevance_score=out.scores[i],
                            document=RerankDocument(text=body.documents[i]) if body.return_documents else None)
               for i in keep]
    return RerankResponse(id=f"rerank-{uuid.uuid4().hex[:16]}", model=out.model or rt.served_model_name,
                          results=results,
                          alignserve={"method": out.method, "rubric": out.rubric, "profile": out.profile.label})
