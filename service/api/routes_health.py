"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .services import Services, get_services

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: Services = Depends(get_services)) -> JSONResponse:
    if services.worker is not None and services.engine is not None:
        rm = services.reward_model.name if services.reward_model is not None else None
        body = {"model": services.engine.model_name, "backend": services.engine.backend,
                "reward_model": rm, "reward_model_state": services.reward_state}
        if services.reward_state == "loading":  # configured features all work before traffic comes
            return JSONResponse({"status": "loading", **body}, status_code=503)
        return JSONResponse({"status": "ready", **body})
    if services.load_error:
        return JSONResponse({"status": "failed", "error": services.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


@router.get("/metrics")
def metrics(services: Services = Depends(get_services)) -> Response:
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
