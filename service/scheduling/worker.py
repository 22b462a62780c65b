"""One thread owns the engine; asyncio handlers hand it work through a bounded queue.

Why a thread: a model forward holds the GIL-free torch kernels for long stretches, and the event
loop must keep answering health checks, metrics and streaming clients meanwhile. Why bounded:
past ``max_queue`` waiting jobs a new request is refused at once (HTTP 429) instead of waiting
unboundedly.

Two modes, chosen by the engine. A batch engine (transformers): generation jobs waiting together
are decoded as one batch (up to ``max_batch_size``); other calls (scoring, activation capture)
run one at a time between batches. A continuous engine (vLLM, ``submit``): each generation job is
handed to the engine as soon as fewer than ``max_in_flight`` are running there, so requests join
and leave the running batch step by step; other calls run on a second thread so they never hold
up admission.

Engine death (``health.py``): an error that means the engine is gone marks ``health`` dead; from
then on every queued, in-flight and new job fails at once with ``EngineDead`` (HTTP 503). An
engine that can tell it died while idle (``health_error()``, vLLM) is probed every
``probe_interval_s``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..engines.base import Engine, GenerationRequest, GenerationResult, is_continuous
from .health import EngineHealth, EngineOutOfMemory, describe, is_fatal, is_out_of_memory

log = logging.getLogger(__name__)
T = TypeVar("T")


class Overloaded(RuntimeError):
    """The admission queue is full."""


class WorkerStopped(RuntimeError):
    """The worker is shutting down or has stopped."""


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop | None  # None: a thread waits on a concurrent future
    future: asyncio.Future[Any] | concurrent.futures.Future[Any]
    request: GenerationRequest | None = None
    call: Callable[[Engine], Any] | None = None


def _resolve(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    if job.loop is None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # settled by another thread
            settle()
        return
    with contextlib.suppress(RuntimeError):  # loop closed: the caller is gone
        job.loop.call_soon_threadsafe(settle)


def _cancelled_result(req: GenerationRequest) -> GenerationResult:
    return GenerationResult(req.request_id, "", [], "cancelled", 0, None, 0, [], 0.0, 0.0)


class EngineWorker:
    def __init__(self, engine: Engine, max_queue: int, max_batch_size: int, max_in_flight: int | None = None,
                 health: EngineHealth | None = None, probe_interval_s: float = 0.5) -> None:
        self.engine = engine
        self.health = health or EngineHealth()
        self.probe_interval_s = probe_interval_s
        self._next_probe = 0.0
        self.max_batch_size = max_batch_size
        self.continuous = is_continuous(engine)
        self.max_in_flight = max_in_flight or max_batch_size
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._calls: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._live: set[str] = set()
        self._in_flight: dict[str, _Job] = {}  # continuous mode: handed to the engine, not settled
        self._live_lock = threading.Lock()
        self.health.subscribe(self._on_engine_death)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self.continuous:
            self._calls = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine-calls")
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the work in progress (up to ``timeout``), fail everything still queued."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout)
        while self.continuous and self.live_requests and time.monotonic() < deadline:
            time.sleep(0.05)  # in-flight requests drain inside the engine
        if self._calls is not None:
            self._calls.shutdown(wait=False, cancel_futures=True)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            _resolve(job, error=WorkerStopped("server is shutting down"))

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def live_requests(self) -> set[str]:
        with self._live_lock:
            return set(self._live)

    # ---- submission (event-loop side) ---------------------------------------------------
    def _submit(self, job: _Job) -> None:
        if self.health.dead:
            raise self.health.error()
        if self._stop.is_set():
            raise WorkerStopped("server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests already waiting") from None
        if self.health.dead:  # died meanwhile: the death handler may have drained the queue already
            self._fail_queued()

    def submit_generate(self, request: GenerationRequest) -> asyncio.Future[GenerationResult]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[GenerationResult] = loop.create_future()
        self._submit(_Job(loop, fut, request=request))
        return fut

    def submit_call(self, call: Callable[[Engine], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._submit(_Job(loop, fut, call=call))
        return fut

    def call_blocking(self, call: Callable[[Engine], T], timeout: float = 600.0) -> T:
        """Run ``call`` on the engine thread from another thread (background jobs) and wait.

        A full queue is waited out rather than refused: background work yields to requests."""
        deadline = time.monotonic() + timeout
        while True:
            fut: concurrent.futures.Future[T] = concurrent.futures.Future()
            try:
                self._submit(_Job(None, fut, call=call))
                break
            except Overloaded:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return fut.result(timeout=max(0.0, deadline - time.monotonic()))

    # ---- engine death ------------------------------------------------------------------
    def _on_engine_death(self, _reason: str) -> None:
        """Fail everything at once: queued jobs and (continuous) jobs the engine holds, whose
        futures a dead engine may never settle."""
        with self._live_lock:
            in_flight = list(self._in_flight.values())
            self._in_flight.clear()
            self._live.clear()
        for job in in_flight:
            _resolve(job, error=self.health.error())
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            _resolve(job, error=self.health.error())

    def _failure(self, exc: BaseException) -> BaseException:
        """What the caller gets for ``exc``: the engine-death error when ``exc`` killed the engine."""
        if is_fatal(exc):
            self.health.mark_dead(describe(exc))
            return self.health.error()
        if is_out_of_memory(exc):  # this request's failure: 503 for it, the engine serves on
            return EngineOutOfMemory(exc)
        return exc

    def _probe(self) -> None:
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + self.probe_interval_s
            self.health.probe(self.engine)

    # ---- worker thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.continuous:
                self._run_continuous()
            else:
                self._run_batches()
        except BaseException as exc:  # a bug here would leave every caller waiting for its timeout
            log.exception("engine worker crashed")
            self.health.mark_dead(f"engine worker crashed: {describe(exc)}")

    def _next_job(self, deferred: deque[_Job]) -> _Job | None:
        """The next live job (deferred calls first), or None after a short idle wait."""
        if deferred:
            job = deferred.popleft()
        else:
            self._probe()
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                return None
        if self.health.dead:
            _resolve(job, error=self.health.error())
            return None
        return None if job.future.cancelled() else job

    def _run_continuous(self) -> None:
        none: deque[_Job] = deque()
        while not self._stop.is_set():
            job = self._next_job(none)
            if job is None:
                continue
            if job.call is not None:
                assert self._calls is not None
                self._calls.submit(self._run_call, job)
                continue
            while not self._slots.acquire(timeout=0.1):  # wait for room in the engine
                self._probe()
                if self._stop.is_set():
                    _resolve(job, error=WorkerStopped("server is shutting down"))
                    return
                if self.health.dead:
                    _resolve(job, error=self.health.error())
                    break
            else:
                self._dispatch(job)

    def _dispatch(self, job: _Job) -> None:
        req = job.request
        assert req is not None
        if self.health.dead:
            self._slots.release()
            _resolve(job, error=self.health.error())
            return
        if job.future.cancelled() or req.cancelled.is_set():
            self._slots.release()
            _resolve(job, _cancelled_result(req))
            return
        with self._live_lock:
            self._live.add(req.request_id)
            self._in_flight[req.request_id] = job
        try:
            fut = self.engine.submit(req)  # type: ignore[attr-defined]
        except Exception as exc:  # e.g. a prompt the engine refuses
            self._settle(job, None, exc)
            return
        fut.add_done_callback(functools.partial(self._settled, job))

    def _settled(self, job: _Job, fut: concurrent.futures.Future[GenerationResult]) -> None:
        assert job.request is not None
        if fut.cancelled():
            self._settle(job, _cancelled_result(job.request), None)
        elif fut.exception() is not None:
            self._settle(job, None, fut.exception())
        else:
            self._settle(job, fut.result(), None)

    def _settle(self, job: _Job, result: GenerationResult | None, error: BaseException | None) -> None:
        assert job.request is not None
        if error is not None:
            log.error("generation failed: %s", error, extra={"request_id": job.request.request_id})
            error = self._failure(error)
        with self._live_lock:  # leave the live set before waking the caller (see _run_batch)
            self._live.discard(job.request.request_id)
            self._in_flight.pop(job.request.request_id, None)
        self._slots.release()
        _resolve(job, result, error)

    def _run_batches(self) -> None:
        deferred: deque[_Job] = deque()
        while not self._stop.is_set():
            job = self._next_job(deferred)
            if job is None or job.future.cancelled():
                continue
            if job.call is not None:
                self._run_call(job)
                continue
            batch = [job]
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt.future.cancelled():
                    continue
                (batch if nxt.request is not None else deferred).append(nxt)
            self._run_batch(batch)

    def _run_call(self, job: _Job) -> None:
        if self.health.dead:
            _resolve(job, error=self.health.error())
            return
        try:
            assert job.call is not None
            _resolve(job, job.call(self.engine))
        except Exception as exc:  # reported to the waiting handler, which maps it to an HTTP error
            log.exception("engine call failed")
            _resolve(job, error=self._failure(exc))

    def _run_batch(self, batch: list[_Job]) -> None:
        if self.health.dead:
            for job in batch:
                _resolve(job, error=self.health.error())
            return
        runnable = []
        for job in batch:
            assert job.request is not None
            if job.request.cancelled.is_set():
                _resolve(job, _cancelled_result(job.request))
            else:
                runnable.append(job)
        if not runnable:
            return
        ids = {j.request.request_id for j in runnable if j.request is not None}
        with self._live_lock:
            self._live |= ids
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        isolate = False
        try:
            results = self.engine.generate([j.request for j in runnable if j.request is not None])
            outcomes = [(job, res, None) for job, res in zip(runnable, results, strict=True)]
        except Exception as exc:
            if is_fatal(exc):  # the engine is gone: no point retrying anyone
                log.exception("engine died during a batch")
                outcomes = [(job, None, self._failure(exc)) for job in runnable]
            elif len(runnable) == 1:
                log.exception("generation failed", extra={"request_id": next(iter(ids))})
                outcomes = [(runnable[0], None, self._failure(exc))]
            else:  # isolate the culprit: one bad request must not fail its batch-mates
                isolate = True
        finally:
            # Leave the live set before waking the callers, so that whoever sees a result also
            # sees the request gone from the engine.
            with self._live_lock:
                self._live -= ids
        for job, res, err in outcomes:
            _resolve(job, res, err)
        if isolate:
            for job in runnable:
                self._run_batch([job])
