"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..domain.readiness import Phase
from ..runtime import Runtime
from .deps import get_runtime

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(rt: Runtime = Depends(get_runtime)) -> JSONResponse:
    model = rt.model
    if model is not None:
        rm = rt.reward_model.name if rt.reward_model is not None else None
        body = {"model": rt.served_model_name, "backend": model.engine.backend,
                "reward_model": rm, "reward_model_state": rt.reward_state.describe()}
        if rt.reward_state.phase is Phase.LOADING:  # configured features all work before traffic comes
            return JSONResponse({"status": "loading", **body}, status_code=503)
        return JSONResponse({"status": "ready", **body})
    if rt.model_state.phase is Phase.FAILED:
        return JSONResponse({"status": "failed", "error": rt.model_state.error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


@router.get("/metrics")
def metrics(rt: Runtime = Depends(get_runtime)) -> Response:
    return Response(rt.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
