"""The running service: everything the app's lifespan builds, and the model that loads behind it.

``create_app`` builds one :class:`Runtime` in its lifespan and hands it to handlers through
``api.deps.get_runtime``. The stores, metrics and keys exist at once; the generator (engine +
worker + compile-job runner) and the reward model load on a background thread, so ``/healthz``
answers while weights load, and their state is a :class:`~service.domain.readiness.Readiness`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .config import Settings, served_model_name
from .domain.errors import InvalidInput, Unavailable
from .domain.generation import Generations
from .domain.profiles import ProfileResolver
from .domain.readiness import ABSENT, LOADING, READY, Phase, Readiness, failed
from .domain.scoring import Scoring
from .engines.base import Engine
from .jobs.runner import JobRunner
from .language.fidelity import LanguageDetector
from .metrics.prometheus import Metrics
from .reward import Scorer
from .reward.reward_model import RewardModelRunner
from .scheduling.health import EngineHealth
from .scheduling.worker import EngineWorker
from .store.api_keys import ApiKeyStore, KeyVerifier, RateLimiter
from .store.jobs import JobStore
from .store.profiles import ProfileStore

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]
RewardFactory = Callable[[Settings], RewardModelRunner | None]


@dataclass(frozen=True)
class LoadedModel:
    """The generator once loaded: the engine, the thread that owns it, the compile-job runner."""

    engine: Engine
    worker: EngineWorker
    runner: JobRunner


class Runtime:
    def __init__(self, settings: Settings, engine_factory: EngineFactory,
                 reward_factory: RewardFactory | None = None, scorers: dict[str, Scorer] | None = None,
                 health: EngineHealth | None = None) -> None:
        self.settings = settings
        self.health = health or EngineHealth()  # the generator's; once dead, the process restarts
        self.engine_factory, self.reward_factory = engine_factory, reward_factory
        self.store = ProfileStore(settings.resolved_db_url())
        self.keys = ApiKeyStore(self.store.engine)
        self.verifier = KeyVerifier(self.keys)
        self.limiter = RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None
        self.jobs = JobStore(self.store.engine, settings.max_jobs)
        self.metrics = Metrics()
        self.language = LanguageDetector()
        self.profiles = ProfileResolver(self.store)
        self.generations = Generations(self)
        self.scoring = Scoring(self, scorers)
        self.served_model_name = served_model_name(settings)
        self.model: LoadedModel | None = None
        self.model_state: Readiness = LOADING
        self.reward_model: RewardModelRunner | None = None
        self.reward_state: Readiness = LOADING
        self._loader: threading.Thread | None = None
        self._closing = threading.Event()  # ends a reward-model retry wait at shutdown

    # ---- convenient views (tests and ops endpoints) -----------------------------------------
    @property
    def engine(self) -> Engine | None:
        return self.model.engine if self.model else None

    @property
    def worker(self) -> EngineWorker | None:
        return self.model.worker if self.model else None

    @property
    def runner(self) -> JobRunner | None:
        return self.model.runner if self.model else None

    @property
    def load_error(self) -> str | None:
        return self.model_state.error

    # ---- what handlers need ------------------------------------------------------------------
    def require_model(self) -> LoadedModel:
        if self.model is not None:
            return self.model
        if self.model_state.phase is Phase.FAILED:
            raise Unavailable("model_unavailable", f"model failed to load: {self.model_state.error}")
        raise Unavailable("model_loading", "model is still loading", retry_after=5)

    def require_reward_model(self) -> RewardModelRunner:
        if self.reward_model is not None:
            return self.reward_model
        state = self.reward_state
        if state.phase is Phase.LOADING:
            raise Unavailable("reward_model_loading", "the reward model is still loading", retry_after=5)
        if state.phase is Phase.FAILED:
            raise Unavailable("reward_model_unavailable", f"the reward model failed: {state.error}")
        raise InvalidInput("no_reward_model", "no reward model is configured on this server (start it with "
                           "--reward-model embedded or a folder/hub id of a sequence-classification RM)")

    # ---- lifecycle ---------------------------------------------------------------------------
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
            runner = JobRunner(self.jobs, self.store, worker, engine,
                               on_finish=lambda status: self.metrics.jobs.labels(status).inc(),
                               call_timeout_s=self.settings.request_timeout_s)
            runner.start()
            self.model = LoadedModel(engine, worker, runner)
            self.model_state = READY
            self.metrics.model_ready.set(1)
            log.info("model ready", extra={"model": self.served_model_name, "backend": engine.backend})
        except Exception as exc:
            self.model_state = failed(exc)
            self.reward_state = ABSENT
            log.exception("model failed to load")
            return
        self._load_reward_model()

    def _load_reward_model(self) -> None:
        """After the generator (on vLLM it must claim its GPU share first). A load that fails is tried
        again (``reward_load_attempts``, ``reward_load_retry_s`` apart; the state stays loading): vLLM's
        start-up memory profile fails whenever another process on the GPU frees or takes memory
        meanwhile, which says nothing about the next try. A reward model that still fails leaves the
        server serving everything else; /readyz and /score say why."""
        attempts = self.settings.reward_load_attempts
        for attempt in range(1, attempts + 1):
            try:
                rm = self.reward_factory(self.settings) if self.reward_factory is not None else None
                break
            except Exception as exc:
                if attempt == attempts or self._closing.is_set():
                    self.reward_state = failed(exc)
                    log.exception("reward model failed to load", extra={"attempt": attempt, "attempts": attempts})
                    return
                log.warning("reward model failed to load; trying again", extra={
                    "attempt": attempt, "attempts": attempts, "retry_in_s": self.settings.reward_load_retry_s,
                    "error": f"{type(exc).__name__}: {exc}"[:500]})
                if self._closing.wait(self.settings.reward_load_retry_s):
                    self.reward_state = failed(exc)
                    return
        self.reward_model = rm
        self.reward_state = READY if rm is not None else ABSENT
        if rm is not None:
            log.info("reward model ready", extra={"model": rm.name})

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.model is not None

    def shutdown(self, drain_s: float) -> None:
        self._closing.set()
        if self._loader is not None:
            self._loader.join(timeout=drain_s)
        if self.model is not None:
            self.model.runner.stop(timeout=drain_s)
            self.model.worker.stop(timeout=drain_s)
            self.model.engine.close()
        if self.reward_model is not None:
            self.reward_model.close()
        self.metrics.model_ready.set(0)
        self.store.close()
