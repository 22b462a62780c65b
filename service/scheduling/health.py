"""Is the engine still alive? One flag per engine, set once, that everything else follows.

Why: when an engine dies (vLLM's engine-core subprocess exits and ``AsyncLLM`` raises
``EngineDeadError``; a CUDA error poisons the transformers engine's context) every later call
fails too, so the server must stop pretending: fail in-flight and queued work at once with 503,
refuse new work, turn ``/readyz`` to 503 and let the process exit so that its supervisor
(Kubernetes) starts a fresh one. A dead engine is never revived inside the process: the GPU
state it leaves behind cannot be trusted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..domain.errors import Unavailable

log = logging.getLogger(__name__)

# Errors after which nothing on the engine can succeed. vLLM's is matched by name so that this
# module never imports vLLM (the CPU install has none). CUDA OOM is *not* here: it fails the
# request that hit it, and the engine keeps serving.
_FATAL_TYPES = ("EngineDeadError",)
_FATAL_MESSAGES = ("illegal memory access", "device-side assert", "unspecified launch failure",
                   "misaligned address", "CUBLAS_STATUS_EXECUTION_FAILED", "NCCL error", "ECC error")


class EngineUnavailable(Unavailable):
    """The engine cannot serve this request (HTTP 503; ``code`` is the error's type)."""

    def __init__(self, message: str, error_type: str, retry_after: float | None = None) -> None:
        super().__init__(error_type, message, retry_after=retry_after)


class EngineDead(EngineUnavailable):
    """The engine can no longer serve anything."""

    def __init__(self, message: str, error_type: str = "engine_unavailable") -> None:
        super().__init__(message, error_type)


class EngineOutOfMemory(EngineUnavailable):
    """This request's work did not fit the accelerator's memory; the engine itself is fine."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the engine ran out of accelerator memory for this request ({describe(cause)}); "
                         "retry later, or with a shorter prompt or fewer max_tokens", "out_of_memory", retry_after=5)


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` means the engine itself is dead, not just this request's failure."""
    if isinstance(exc, EngineDead) or any(c.__name__ in _FATAL_TYPES for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _FATAL_MESSAGES)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA OOM), matched by name so this module needs no torch."""
    return any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class EngineHealth:
    """Thread-safe liveness of one engine: alive until ``mark_dead``; then dead for good.

    Subscribers (the worker failing its jobs, the server deciding to exit) are called once, on the
    thread that noticed the death."""

    def __init__(self, name: str = "engine") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._reason: str | None = None
        self.died_at: float | None = None
        self._subscribers: list[Callable[[str], None]] = []

    @property
    def dead(self) -> str | None:
        """Why the engine died, or None while it is alive."""
        return self._reason

    def mark_dead(self, reason: str) -> bool:
        """Record the death (the first reason wins); True for the call that recorded it."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason, self.died_at = reason, time.monotonic()
            subscribers = list(self._subscribers)
        log.error("%s died", self.name, extra={"reason": reason})
        for notify in subscribers:
            try:
                notify(reason)
            except Exception:
                log.exception("engine-death subscriber failed")
        return True

    def subscribe(self, notify: Callable[[str], None]) -> None:
        with self._lock:
            reason = self._reason
            if reason is None:
                self._subscribers.append(notify)
        if reason is not None:
            notify(reason)

    def probe(self, target: object) -> str | None:
        """Ask ``target`` (an engine or reward-model runner) whether it is dead, if it can tell:
        its optional ``health_error() -> str | None`` is a cheap check that needs no traffic (vLLM:
        the engine core's process is gone). Returns the reason once dead."""
        check = getattr(target, "health_error", None)
        if self._reason is None and callable(check):
            try:
                reason = check()
            except Exception as exc:
                reason = f"health check failed: {describe(exc)}"
            if reason:
                self.mark_dead(str(reason))
        return self._reason

    def error(self, error_type: str = "engine_unavailable") -> EngineDead:
        """The error handed to callers once dead."""
        return EngineDead(f"the {self.name} died ({self._reason}); this server is restarting", error_type)
