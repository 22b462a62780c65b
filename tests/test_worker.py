"""The engine worker: batching, failure isolation, bounded queue, shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence

import pytest

from service.alignment.sampling import SamplingParams
from service.engines.base import GenerationRequest, GenerationResult
from service.scheduling.worker import EngineWorker, Overloaded, WorkerStopped


class FakeEngine:
    backend = "fake"
    model_name = "fake"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.gate.wait(10)
        ids = [r.request_id for r in requests]
        self.batches.append(ids)
        if "bad" in ids:
            raise RuntimeError("boom")
        return [GenerationResult(i, i.upper(), [1], "stop", 1, None, 1, [], 0.0, 0.0) for i in ids]


def req(rid: str) -> GenerationRequest:
    return GenerationRequest(rid, [{"role": "user", "content": "x"}], SamplingParams(max_tokens=1))


def test_batching_and_failure_isolation() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.gate.clear()
        worker = EngineWorker(engine, max_queue=10, max_batch_size=4)  # type: ignore[arg-type]
        worker.start()
        first = worker.submit_generate(req("first"))
        await asyncio.sleep(0.2)  # the worker now holds 'first' at the gate
        futs = [worker.submit_generate(req(i)) for i in ("a", "bad", "b")]
        engine.gate.set()
        assert (await first).text == "FIRST"
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert [getattr(r, "text", None) for r in results] == ["A", None, "B"]
        assert isinstance(results[1], RuntimeError)
        assert ["a", "bad", "b"] in engine.batches  # decoded together first, then one by one
        assert not worker.live_requests
        worker.stop(5)

    asyncio.run(main())


def test_bounded_queue_and_stop() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.gate.clear()
        worker = EngineWorker(engine, max_queue=2, max_batch_size=1)  # type: ignore[arg-type]
        worker.start()
        running = worker.submit_generate(req("r"))
        await asyncio.sleep(0.2)
        queued = [worker.submit_generate(req("q1")), worker.submit_generate(req("q2"))]
        with pytest.raises(Overloaded):
            worker.submit_generate(req("q3"))
        stopper = threading.Thread(target=worker.stop, args=(5,))
        stopper.start()
        await asyncio.sleep(0.1)
        engine.gate.set()
        stopper.join(10)
        assert (await running).text == "R"  # the batch in progress finishes
        for f in queued:  # what never started is failed cleanly, not left hanging
            with pytest.raises(WorkerStopped):
                await f
        with pytest.raises(WorkerStopped):
            worker.submit_generate(req("late"))

    asyncio.run(main())


class FakeContinuousEngine:
    """Settles each submitted request when the test releases it, like vLLM's continuous batching."""

    backend = "fake-continuous"
    model_name = "fake"

    def __init__(self) -> None:
        self.pending: dict[str, tuple[GenerationRequest, concurrent.futures.Future[GenerationResult]]] = {}
        self.lock = threading.Lock()
        self.calls_ran = threading.Event()

    def submit(self, request: GenerationRequest) -> concurrent.futures.Future[GenerationResult]:
        if request.request_id == "refused":
            raise ValueError("prompt too long")
        fut: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        with self.lock:
            self.pending[request.request_id] = (request, fut)
        return fut

    def release(self, rid: str, error: Exception | None = None) -> None:
        with self.lock:
            _, fut = self.pending.pop(rid)
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(GenerationResult(rid, rid.upper(), [1], "stop", 1, None, 1, [], 0.0, 0.0))

    def in_engine(self) -> set[str]:
        with self.lock:
            return set(self.pending)


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def test_continuous_engine_admits_as_slots_free() -> None:
    async def main() -> None:
        engine = FakeContinuousEngine()
        worker = EngineWorker(engine, max_queue=10, max_batch_size=1, max_in_flight=2)  # type: ignore[arg-type]
        assert worker.continuous
        worker.start()
        futs = {rid: worker.submit_generate(req(rid)) for rid in ("a", "b", "c")}
        await _until(lambda: engine.in_engine() == {"a", "b"})
        await asyncio.sleep(0.2)
        assert engine.in_engine() == {"a", "b"} and worker.depth == 0  # 'c' waits for a slot
        engine.release("b")  # finishing out of order frees a slot for 'c' at once
        assert (await futs["b"]).text == "B"
        await _until(lambda: engine.in_engine() == {"a", "c"})
        # scoring-type calls do not wait behind running generations
        assert await worker.submit_call(lambda e: "called") == "called"
        engine.release("c", RuntimeError("boom"))  # one failure fails only its own request
        with pytest.raises(RuntimeError):
            await futs["c"]
        engine.release("a")
        assert (await futs["a"]).text == "A"
        assert not worker.live_requests
        worker.stop(5)

    asyncio.run(main())


def test_continuous_engine_refusal_cancellation_and_drain() -> None:
    async def main() -> None:
        engine = FakeContinuousEngine()
        worker = EngineWorker(engine, max_queue=10, max_batch_size=1, max_in_flight=1)  # type: ignore[arg-type]
        worker.start()
        with pytest.raises(ValueError):
            await worker.submit_generate(req("refused"))  # the slot comes back after a refusal
        running = worker.submit_generate(req("r"))
        await _until(lambda: engine.in_engine() == {"r"})
        waiting = req("w")
        waiting_fut = worker.submit_generate(waiting)
        waiting.cancelled.set()  # client left while queued: never reaches the engine
        engine.release("r")
        assert (await running).text == "R"
        assert (await waiting_fut).finish_reason == "cancelled"
        assert engine.in_engine() == set()
        last = worker.submit_generate(req("last"))
        await _until(lambda: engine.in_engine() == {"last"})
        stopper = threading.Thread(target=worker.stop, args=(5,))
        stopper.start()
        await asyncio.sleep(0.2)
        assert stopper.is_alive()  # stop waits for the in-flight request to drain
        engine.release("last")
        stopper.join(5)
        assert (await last).text == "LAST"

    asyncio.run(main())
