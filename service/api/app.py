"""The FastAPI app factory: lifespan-managed engine worker, profile store and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from ..config import Settings
from ..engines.factory import build_engine
from ..metrics.prometheus import Metrics
from ..reward import Scorer, default_scorers
from ..store.profiles import ProfileStore
from . import routes_generate, routes_health, routes_profiles, routes_score
from .errors import error_json, install_error_handlers
from .services import EngineFactory, Services

log = logging.getLogger("alignserve.access")

_UNMATCHED = "unmatched"


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", _UNMATCHED)


def create_app(settings: Settings | None = None, engine_factory: EngineFactory | None = None,
               scorers: dict[str, Scorer] | None = None, drain_s: float = 30.0) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services(
            settings=settings, store=ProfileStore(settings.resolved_db_url()), metrics=Metrics(),
            scorers=scorers or default_scorers(), engine_factory=engine_factory or build_engine,
        )
        app.state.services = services
        services.start_loading()
        try:
            yield
        finally:
            services.shutdown(drain_s)

    app = FastAPI(
        title="alignserve",
        version="0.1.0",
        description="Inference-time alignment for LLMs: Linear Alignment per request, reward scoring, "
        "versioned preference profiles.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            response: Response = error_json(413, "body_too_large",
                                            f"request body exceeds {settings.max_body_bytes} bytes")
        else:
            response = await call_next(request)
        route = _route_label(request)
        services: Services | None = getattr(request.app.state, "services", None)
        if services is not None and route not in ("/metrics", "/healthz", "/readyz"):
            profile = getattr(request.state, "profile_label", "none")
            services.metrics.requests.labels(route, str(response.status_code), profile).inc()
            services.metrics.request_latency.labels(route).observe(time.perf_counter() - start)
            log.info("request", extra={"method": request.method, "route": route, "status": response.status_code,
                                       "duration_s": round(time.perf_counter() - start, 4), "profile": profile})
        return response

    app.include_router(routes_health.router)
    app.include_router(routes_generate.router)
    app.include_router(routes_score.router)
    app.include_router(routes_profiles.router)
    return app
