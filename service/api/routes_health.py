"""Liveness, readiness and the Prometheus exposition (GET and HEAD: probes and scrapers use both)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .services import Services, get_services

router = APIRouter(tags=["ops"])
_PROBE = ["GET", "HEAD"]


@router.api_route("/healthz", methods=_PROBE)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _reward_state(services: Services) -> str:
    rm = services.reward_model
    if rm is not None and rm.health.probe(rm):
        return f"failed: {rm.health.dead}"
    return services.reward_state


@router.api_route("/readyz", methods=_PROBE)
def readyz(services: Services = Depends(get_services)) -> JSONResponse:
    engine = services.engine
    dead = services.health.probe(engine) if engine is not None else services.health.dead
    if dead:  # the process is on its way out (see `alignserve serve`); take it out of rotation
        return JSONResponse({"status": "failed", "error": f"engine died: {dead}"}, status_code=503)
    if services.worker is not None and engine is not None:
        rm = services.reward_model.name if services.reward_model is not None else None
        reward_state = _reward_state(services)
        body = {"model": engine.model_name, "backend": engine.backend,
                "reward_model": rm, "reward_model_state": reward_state}
        if reward_state == "loading":  # configured features all work before traffic comes
            return JSONResponse({"status": "loading", **body}, status_code=503)
        return JSONResponse({"status": "ready", **body})
    if services.load_error:
        return JSONResponse({"status": "failed", "error": services.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


@router.api_route("/metrics", methods=_PROBE)
def metrics(services: Services = Depends(get_services)) -> Response:
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
