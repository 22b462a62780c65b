"""The FastAPI app factory: lifespan-managed engine worker, profile store and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..config import Settings
from ..engines.factory import build_engine
from ..language.fidelity import LanguageDetector
from ..metrics.prometheus import Metrics
from ..reward import Scorer, default_scorers
from ..reward.factory import build_reward_model
from ..scheduling.health import EngineHealth
from ..store.api_keys import ApiKeyStore, KeyVerifier, RateLimiter
from ..store.jobs import JobStore
from ..store.profiles import ProfileStore
from . import routes_generate, routes_health, routes_profiles, routes_score
from .errors import install_error_handlers
from .middleware import ObserveMiddleware
from .services import EngineFactory, RewardFactory, Services


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
        store = ProfileStore(settings.resolved_db_url())
        keys = ApiKeyStore(store.engine)
        services = Services(
            settings=settings, store=store, metrics=Metrics(),
            scorers=scorers or default_scorers(), engine_factory=engine_factory or build_engine,
            reward_factory=reward_factory, keys=keys, verifier=KeyVerifier(keys), language=LanguageDetector(),
            jobs=JobStore(store.engine, settings.max_jobs),
            limiter=RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None,
            health=engine_health,
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

    app.add_middleware(ObserveMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_header_bytes=settings.max_header_bytes, body_timeout_s=settings.body_timeout_s)
    app.include_router(routes_health.router)
    app.include_router(routes_generate.router)
    app.include_router(routes_score.router)
    app.include_router(routes_profiles.router)
    return app
