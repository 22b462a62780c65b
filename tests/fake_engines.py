"""Engines that die on demand, for the engine-death tests (CPU; the real vLLM case runs on a GPU).

``CoreProcessEngine`` mimics vLLM's ``AsyncLLM``: requests batch continuously (``submit``), and its
"engine core" is a real child process; when that process dies (the test SIGKILLs it), every
outstanding request fails with an error named ``EngineDeadError`` and ``health_error()`` reports it.
``DyingBatchEngine`` is the tiny transformers engine whose next ``generate`` raises a CUDA error
that poisons the context (what a GPU fault looks like in-process)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from service.engines.base import GenerationRequest, GenerationResult, TokenEvent
from service.engines.transformers.engine import TransformersEngine

CUDA_FAULT = "CUDA error: an illegal memory access was encountered"


class EngineDeadError(Exception):
    """Named like vLLM's ``vllm.v1.engine.exceptions.EngineDeadError``, which the service matches by name."""


class CoreProcessEngine:
    backend = "fake-core"

    def __init__(self, inner: TransformersEngine, token_s: float = 0.05, settle_on_death: bool = True) -> None:
        self.inner = inner
        self.model_name, self.max_model_len = inner.model_name, inner.max_model_len
        self.token_s, self.settle_on_death = token_s, settle_on_death
        self.core = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        self._lock = threading.Lock()
        self._outstanding: dict[str, concurrent.futures.Future[GenerationResult]] = {}
        threading.Thread(target=self._watch_core, daemon=True).start()

    # ---- the "engine core" -------------------------------------------------------------
    def _watch_core(self) -> None:
        self.core.wait()
        with self._lock:
            pending = list(self._outstanding.values())
            self._outstanding.clear()
        if self.settle_on_death:  # otherwise: a wedged engine that never answers again
            for fut in pending:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    fut.set_exception(EngineDeadError("engine core process died"))

    def health_error(self) -> str | None:
        code = self.core.poll()
        return None if code is None else f"engine core exited with status {code}"

    def _check(self) -> None:
        if self.core.poll() is not None:
            raise EngineDeadError("engine core process died")

    # ---- Engine ------------------------------------------------------------------------
    def submit(self, req: GenerationRequest) -> concurrent.futures.Future[GenerationResult]:
        self._check()
        fut: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        with self._lock:
            self._outstanding[req.request_id] = fut
        threading.Thread(target=self._decode, args=(req, fut), daemon=True).start()
        return fut

    def _decode(self, req: GenerationRequest, fut: concurrent.futures.Future[GenerationResult]) -> None:
        started, n, finish = time.perf_counter(), 0, "length"
        while n < req.sampling.max_tokens:
            time.sleep(self.token_s)
            if self.core.poll() is not None:
                return  # the watcher settles (or, wedged, never does)
            if req.cancelled.is_set():
                finish = "cancelled"
                break
            if req.on_token is not None:
                req.on_token(TokenEvent(req.request_id, 100 + n, "x", n))
            n += 1
        with self._lock:
            self._outstanding.pop(req.request_id, None)
        result = GenerationResult(req.request_id, "x" * n, [100 + i for i in range(n)], finish,  # type: ignore[arg-type]
                                  5, None, n, [], self.token_s, time.perf_counter() - started)
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            fut.set_result(result)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [self.submit(r).result() for r in requests]

    def prompt_size(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.prompt_size(*args, **kwargs)

    def stats(self) -> Any:
        return self.inner.stats()

    def label_probability(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.inner.label_probability(*args, **kwargs)

    def capture_head_activations(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.inner.capture_head_activations(*args, **kwargs)

    def open_readout(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.inner.open_readout(*args, **kwargs)

    def close(self) -> None:
        if self.core.poll() is None:
            self.core.kill()
        self.core.wait()


class OomOnMarker:
    """The tiny transformers engine, running out of (pretend) GPU memory on any batch holding a
    request whose prompt contains ``OOM``."""

    def __init__(self, inner: TransformersEngine) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        if any("OOM" in r.messages[-1]["content"] for r in requests):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.inner.generate(requests)


class DyingBatchEngine:
    """The tiny transformers engine; once ``die`` is set, the ``generate`` in progress (it waits for
    the signal while ``hold`` is set) and every later call raise a context-poisoning CUDA error."""

    def __init__(self, inner: TransformersEngine) -> None:
        self.inner = inner
        self.in_generate = threading.Event()
        self.hold = threading.Event()
        self.die = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.in_generate.set()
        while self.hold.is_set() and not self.die.is_set():
            time.sleep(0.01)
        if self.die.is_set():
            raise RuntimeError(CUDA_FAULT)
        return self.inner.generate(requests)

    def label_probability(self, *args: Any, **kwargs: Any) -> Any:
        if self.die.is_set():
            raise RuntimeError(CUDA_FAULT)
        return self.inner.label_probability(*args, **kwargs)
