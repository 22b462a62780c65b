"""The background job runner: compiles Activation-RM profiles one at a time.

Jobs live in the database (``store.jobs``); this thread claims the oldest queued one, runs the
compilation through the engine worker (short calls that interleave with live requests), writes
the profile version with its tensors and records the outcome. On shutdown a running job is put
back in the queue and resumes (from the start) at the next start-up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..engines.base import Engine
from ..reward.activation_rm import CompileCancelled, CompileSettings, LabelledExample, compile_activation_rm
from ..reward.judge import rubric_for
from ..scheduling.worker import EngineWorker, WorkerStopped
from ..store.jobs import JobRecord, JobStore
from ..store.profiles import ProfileStore

log = logging.getLogger(__name__)
COMPILE_KIND = "compile_activation_rm"


class _Stopping(Exception):
    pass


def examples_from_spec(arm: dict[str, Any]) -> list[LabelledExample]:
    """Labelled examples from a profile spec's ``activation_rm`` section (examples and pairs)."""
    out = [LabelledExample(e["prompt"], e["response"], e["label"] == "good") for e in arm.get("examples", [])]
    for p in arm.get("pairs", []):
        out.append(LabelledExample(p["prompt"], p["chosen"], True))
        out.append(LabelledExample(p["prompt"], p["rejected"], False))
    return out


def settings_from_spec(arm: dict[str, Any]) -> CompileSettings:
    return CompileSettings(num_heads=arm["num_heads"], shots_per_context=arm["shots_per_context"],
                           iterations=arm["iterations"], seed=arm["seed"],
                           objective=arm.get("objective", "ranking"), format=arm.get("format", "scalar"))


class JobRunner:
    def __init__(self, jobs: JobStore, profiles: ProfileStore, worker: EngineWorker, engine: Engine,
                 on_finish: Any = None, call_timeout_s: float = 600.0) -> None:
        self.jobs, self.profiles, self.worker, self.engine = jobs, profiles, worker, engine
        self.on_finish = on_finish  # callable(status) for metrics
        self.call_timeout_s = call_timeout_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> None:
        n = self.jobs.requeue_interrupted()
        if n:
            log.info("resuming interrupted jobs", extra={"jobs": n})
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.jobs.claim_next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: JobRecord) -> None:
        log.info("job started", extra={"job": job.id, "profile": job.profile_name, "attempt": job.attempts})
        arm = job.spec["activation_rm"]
        last = [0.0]

        def progress(phase: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0 or done == total:
                last[0] = now
                self.jobs.progress(job.id, phase, done, total)
                log.info("job progress", extra={"job": job.id, "phase": phase, "done": done, "total": total})

        def cancelled() -> bool:
            if self._stop.is_set():
                raise _Stopping()
            return self.jobs.cancel_requested(job.id)

        eng = self.engine
        try:
            compiled = compile_activation_rm(
                lambda call: self.worker.call_blocking(call, self.call_timeout_s),
                examples_from_spec(arm), rubric_for(job.spec.get("principle"), job.spec.get("rubric")),
                settings_from_spec(arm), (eng.num_layers, eng.num_heads, eng.head_dim, eng.max_model_len),
                eng.model_name, progress, cancelled)
            rec = self.profiles.create(job.profile_name, job.spec, compiled.to_bytes())
        except (_Stopping, WorkerStopped):
            self.jobs.requeue(job.id)
            log.info("job interrupted by shutdown; queued again", extra={"job": job.id})
            return
        except CompileCancelled:
            self._finish(job, "cancelled")
            return
        except Exception as exc:
            log.exception("job failed", extra={"job": job.id})
            self._finish(job, "failed", f"{type(exc).__name__}: {exc}")
            return
        self._finish(job, "succeeded", profile_version=rec.version)
        log.info("job succeeded", extra={"job": job.id, "profile": rec.ref, **{
            k: compiled.info[k] for k in ("zero_shot_accuracy", "patched_accuracy", "compile_s")}})

    def _finish(self, job: JobRecord, status: str, error: str | None = None,
                profile_version: int | None = None) -> None:
        self.jobs.finish(job.id, status, error, profile_version)
        if self.on_finish is not None:
            self.on_finish(status)
