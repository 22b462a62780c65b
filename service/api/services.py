"""The app's lifespan-managed state and the dependencies that hand it to handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from ..config import Settings
from ..engines.base import Engine
from ..jobs.runner import JobRunner
from ..language.fidelity import LanguageDetector
from ..metrics.prometheus import Metrics
from ..reward import Scorer
from ..reward.reward_model import RewardModelRunner
from ..scheduling.health import EngineHealth
from ..scheduling.worker import EngineWorker
from ..store.api_keys import ApiKeyStore, KeyVerifier, RateLimiter
from ..store.jobs import JobStore
from ..store.profiles import ProfileStore
from .errors import ApiError

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]
RewardFactory = Callable[[Settings], RewardModelRunner | None]


@dataclass
class Services:
    settings: Settings
    store: ProfileStore
    metrics: Metrics
    scorers: dict[str, Scorer]
    engine_factory: EngineFactory
    keys: ApiKeyStore
    language: LanguageDetector
    verifier: KeyVerifier
    jobs: JobStore
    reward_factory: RewardFactory | None = None
    limiter: RateLimiter | None = None
    worker: EngineWorker | None = None
    runner: JobRunner | None = None
    engine: Engine | None = None
    load_error: str | None = None
    reward_model: RewardModelRunner | None = None
    reward_state: str = "loading"  # loading, ready, none (not configured), failed: <why>
    health: EngineHealth = field(default_factory=EngineHealth)  # the generator's; dead = restart the process
    _loader: threading.Thread | None = field(default=None, repr=False)

    def start_loading(self) -> None:
        """Load the model in the background so /healthz answers while weights load."""
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            engine = self.engine_factory(self.settings)
            worker = EngineWorker(engine, self.settings.max_queue, self.settings.max_batch_size,
                                  max_in_flight=self.settings.max_num_seqs, health=self.health)
            worker.start()
            self.metrics.watch_worker(lambda: worker.depth, lambda: len(worker.live_requests))
            self.metrics.watch_engine(engine.stats)
            self.engine, self.worker = engine, worker
            runner = JobRunner(self.jobs, self.store, worker, engine,
                               on_finish=lambda status: self.metrics.jobs.labels(status).inc(),
                               call_timeout_s=self.settings.request_timeout_s)
            runner.start()
            self.runner = runner
            self.metrics.model_ready.set(1)
            log.info("model ready", extra={"model": engine.model_name, "backend": engine.backend})
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            self.reward_state = "none"
            log.exception("model failed to load")
            return
        self._load_reward_model()

    def _load_reward_model(self) -> None:
        """After the generator (on vLLM it must claim its GPU share first). A reward model that fails
        to load leaves the server serving everything else; /readyz and /score say why."""
        try:
            rm = self.reward_factory(self.settings) if self.reward_factory is not None else None
        except Exception as exc:
            self.reward_state = f"failed: {type(exc).__name__}: {exc}"
            log.exception("reward model failed to load")
            return
        self.reward_model = rm
        self.reward_state = "ready" if rm is not None else "none"
        if rm is not None:
            log.info("reward model ready", extra={"model": rm.name})

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.worker is not None

    def shutdown(self, drain_s: float) -> None:
        if self._loader is not None:
            self._loader.join(timeout=drain_s)
        if self.runner is not None:
            self.runner.stop(timeout=drain_s)
        if self.worker is not None:
            self.worker.stop(timeout=drain_s)
        if self.engine is not None:
            self.engine.close()
        if self.reward_model is not None:
            self.reward_model.close()
        self.metrics.model_ready.set(0)
        self.store.close()


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def ready_worker(services: Services) -> tuple[EngineWorker, Engine]:
    if services.worker is None or services.engine is None:
        if services.load_error:
            raise ApiError(503, "model_unavailable", f"model failed to load: {services.load_error}")
        raise ApiError(503, "model_loading", "model is still loading", headers={"Retry-After": "5"})
    return services.worker, services.engine
