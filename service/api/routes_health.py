"""Liveness, readiness and the Prometheus exposition (GET and HEAD: probes and scrapers use both)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..domain.readiness import Phase
from ..runtime import Runtime
from .deps import get_runtime

router = APIRouter(tags=["ops"])
_PROBE = ["GET", "HEAD"]


@router.api_route("/healthz", methods=_PROBE)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _reward_state(rt: Runtime) -> str:
    rm = rt.reward_model
    if rm is not None and rm.health.probe(rm):  # died after loading: the rest keeps serving
        return f"failed: {rm.health.dead}"
    return rt.reward_state.describe()


@router.api_route("/readyz", methods=_PROBE)
def readyz(rt: Runtime = Depends(get_runtime)) -> JSONResponse:
    model = rt.model
    dead = rt.health.probe(model.engine) if model is not None else rt.health.dead
    if dead:  # the process is on its way out (see `alignserve serve`): take it out of rotation
        return JSONResponse({"status": "failed", "error": f"engine died: {dead}"}, status_code=503)
    if model is not None:
        rm = rt.reward_model.name if rt.reward_model is not None else None
        body = {"model": rt.served_model_name, "backend": model.engine.backend,
                "reward_model": rm, "reward_model_state": _reward_state(rt)}
        if rt.reward_state.phase is Phase.LOADING:  # configured features all work before traffic comes
            return JSONResponse({"status": "loading", **body}, status_code=503)
        return JSONResponse({"status": "ready", **body})
    if rt.model_state.phase is Phase.FAILED:
        return JSONResponse({"status": "failed", "error": rt.model_state.error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


@router.api_route("/metrics", methods=_PROBE)
def metrics(rt: Runtime = Depends(get_runtime)) -> Response:
    return Response(rt.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
