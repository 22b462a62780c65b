"""The FastAPI app factory: lifespan-managed engine worker, profile store and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..config import Settings
from ..engines.factory import build_engine
from ..reward import Scorer
from ..reward.factory import build_reward_model
from ..runtime import EngineFactory, RewardFactory, Runtime
from ..scheduling.health import EngineHealth
from . import routes_generate, routes_health, routes_profiles, routes_score
from .errors import install_error_handlers
from .middleware import ObserveMiddleware
from .openai import rerank as openai_rerank
from .openai import routes as openai_routes


def create_app(settings: Settings | None = None, engine_factory: EngineFactory | None = None,
               scorers: dict[str, Scorer] | None = None, drain_s: float = 30.0,
               reward_factory: RewardFactory | None = build_reward_model,
               health: EngineHealth | None = None) -> FastAPI:
    """``health``: the generator engine's liveness, given by the caller that acts on its death
    (``alignserve serve`` exits so that the process is restarted)."""
    settings = settings or Settings()
    engine_health = health or EngineHealth()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, engine_factory or build_engine, reward_factory, scorers, health=engine_health)
        app.state.runtime = runtime
        runtime.start_loading()
        try:
            yield
        finally:
            runtime.shutdown(drain_s)

    app = FastAPI(
        title="alignserve",
        version="0.1.0",
        description="Inference-time alignment for LLMs: Linear Alignment per request, reward scoring, "
        "versioned preference profiles.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    app.add_middleware(ObserveMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_header_bytes=settings.max_header_bytes, body_timeout_s=settings.body_timeout_s)
    app.include_router(routes_health.router)
    app.include_router(routes_generate.router)
    app.include_router(routes_score.router)
    app.include_router(routes_profiles.router)
    app.include_router(openai_routes.router)
    app.include_router(openai_rerank.router)
    return app
