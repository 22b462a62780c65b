"""The engine worker: batching, failure isolation, bounded queue, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

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
