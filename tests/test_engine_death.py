"""Engine death: in-flight and queued requests fail fast with 503 (streams with an ``error`` event),
``/readyz`` turns 503 at once, everything else keeps answering, and ``alignserve serve``'s loop exits
with status 70 for its supervisor to restart it. The same for the reward model, minus the exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.api.http_server import EXIT_ENGINE_DEAD
from service.engines.transformers.engine import TransformersEngine
from service.reward.embedded_rm import build_rm_folder, save_head
from service.reward.reward_model import TransformersRewardModel
from service.scheduling.health import EngineDead, is_fatal

from .conftest import make_settings
from .fake_engines import CUDA_FAULT, CoreProcessEngine, DyingBatchEngine, EngineDeadError, OomOnMarker
from .server_proc import free_port, serve_in_thread, wait_ready

ROOT = Path(__file__).resolve().parents[1]


class Outcome:
    """One request run on a thread: its status (or the stream's last event) and when it ended."""

    def __init__(self, base: str, payload: dict[str, Any], path: str = "/generate") -> None:
        self.base, self.payload, self.path = base, payload, path
        self.status: int | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.body: dict[str, Any] = {}
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with httpx.stream("POST", self.base + self.path, json=self.payload, timeout=30) as r:
                self.status = r.status_code
                if self.payload.get("stream") and r.status_code == 200:
                    event = None
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event:
                            self.events.append((event, json.loads(line[6:])))
                else:
                    self.body = json.loads(r.read())
        finally:
            self.ended = time.monotonic()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert self.ended is not None, f"request {self.payload} never ended"

    @property
    def error_type(self) -> str | None:
        if self.events:
            name, data = self.events[-1]
            return data.get("type") if name == "error" else None
        return self.body.get("error", {}).get("type")


def _tiny(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=256,
                              default_system="You are a helpful assistant.")


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _ready(base: str) -> httpx.Response:
    return httpx.get(f"{base}/readyz", timeout=5)


def test_is_fatal_tells_engine_death_from_request_failures() -> None:
    assert is_fatal(EngineDeadError()) and is_fatal(RuntimeError(CUDA_FAULT)) and is_fatal(EngineDead("x"))
    assert not is_fatal(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_fatal(ValueError("prompt too long")) and not is_fatal(RuntimeError("LA pair diverged"))


def _assert_the_rest_keeps_answering(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        assert c.post("/profiles", json={"name": "after", "principle": "Be brief."}).status_code == 201
        assert c.get("/profiles/after").status_code == 200
        r = c.post("/generate", json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"
        r = c.post("/score", json={"prompt": "q", "responses": ["a"]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "engine_unavailable"


def test_transformers_engine_death_fails_in_flight_and_queued_fast(tmp_path: Path, tiny_model_dir: Path) -> None:
    engine = DyingBatchEngine(_tiny(tiny_model_dir))
    app = create_app(make_settings(tmp_path, tiny_model_dir, max_batch_size=1, reward_model="none"),
                     engine_factory=lambda s: engine, drain_s=3.0)  # type: ignore[arg-type,return-value]
    with serve_in_thread(app) as base:
        rt = app.state.runtime
        engine.hold.set()
        first = Outcome(base, {"prompt": "one", "max_tokens": 4})
        _wait(engine.in_generate.is_set, 10, "the first request never reached the engine")
        queued = [Outcome(base, {"prompt": "two", "max_tokens": 4, "stream": True}),
                  Outcome(base, {"prompt": "three", "max_tokens": 4}),
                  Outcome(base, {"prompt": "q", "responses": ["a", "b"]}, path="/score")]
        _wait(lambda: rt.worker.depth == 3, 10, "requests did not queue")
        killed = time.monotonic()
        engine.die.set()
        for o in (first, *queued):
            o.join(5)
            assert o.ended is not None and o.ended - killed < 2.0, o.payload
            assert o.error_type == "engine_unavailable", (o.payload, o.status, o.body, o.events)
        assert first.status == 503 and queued[1].status == 503 and queued[2].status == 503
        assert queued[0].status == 200 and queued[0].events[-1][0] == "error"  # the stream had started
        ready = _ready(base)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert CUDA_FAULT in ready.json()["error"]
        _assert_the_rest_keeps_answering(base)


@pytest.mark.parametrize("settle_on_death", [True, False], ids=["engine-fails-requests", "engine-wedged"])
def test_engine_core_death_fails_streams_and_turns_readyz(tmp_path: Path, tiny_model_dir: Path,
                                                          settle_on_death: bool) -> None:
    """The vLLM shape: continuous batching, the engine core a child process that gets SIGKILLed.
    Wedged: the dead engine never settles its requests; the worker's probe still fails them."""
    engine = CoreProcessEngine(_tiny(tiny_model_dir), token_s=0.05, settle_on_death=settle_on_death)
    app = create_app(make_settings(tmp_path, tiny_model_dir, max_num_seqs=2, max_tokens_limit=400,
                                   reward_model="none"),
                     engine_factory=lambda s: engine, drain_s=3.0)  # type: ignore[arg-type,return-value]
    try:
        with serve_in_thread(app) as base:
            rt = app.state.runtime
            running = [Outcome(base, {"prompt": "s", "max_tokens": 300, "stream": True}),
                       Outcome(base, {"prompt": "j", "max_tokens": 300})]
            _wait(lambda: len(rt.worker.live_requests) == 2, 10, "requests never reached the engine")
            waiting = Outcome(base, {"prompt": "w", "max_tokens": 300})  # no slot left: waits in the worker
            _wait(lambda: rt.worker.depth == 0, 10, "the worker did not take the third request")
            time.sleep(0.3)  # tokens are flowing
            assert running[0].events and running[0].events[-1][0] == "token"
            killed = time.monotonic()
            os.kill(engine.core.pid, signal.SIGKILL)
            for o in (*running, waiting):
                o.join(5)
                assert o.ended is not None and o.ended - killed < 2.0, o.payload
                assert o.error_type == "engine_unavailable", (o.payload, o.status, o.body, o.events)
            assert running[1].status == 503 and waiting.status == 503
            _wait(lambda: _ready(base).status_code == 503, 5, "/readyz still 200 5 s after the engine died")
            assert time.monotonic() - killed < 5.0
            assert "engine core" in _ready(base).json()["error"]  # whichever noticed first: a request or the probe
            assert not rt.worker.live_requests
            _assert_the_rest_keeps_answering(base)
    finally:
        engine.close()


def test_idle_engine_death_is_noticed_without_traffic(tmp_path: Path, tiny_model_dir: Path) -> None:
    engine = CoreProcessEngine(_tiny(tiny_model_dir))
    app = create_app(make_settings(tmp_path, tiny_model_dir, reward_model="none"),
                     engine_factory=lambda s: engine, drain_s=3.0)  # type: ignore[arg-type,return-value]
    try:
        with serve_in_thread(app) as base:
            health = app.state.runtime.health
            os.kill(engine.core.pid, signal.SIGKILL)
            _wait(lambda: health.dead is not None, 3, "the worker's probe never noticed the dead core")
            assert _ready(base).status_code == 503
    finally:
        engine.close()


def test_out_of_memory_fails_only_its_request(tmp_path: Path, tiny_model_dir: Path) -> None:
    engine = OomOnMarker(_tiny(tiny_model_dir))
    app = create_app(make_settings(tmp_path, tiny_model_dir, max_batch_size=4, reward_model="none"),
                     engine_factory=lambda s: engine, drain_s=3.0)  # type: ignore[arg-type,return-value]
    with serve_in_thread(app) as base:
        outcomes = [Outcome(base, {"prompt": p, "max_tokens": 3}) for p in ("fine", "OOM please", "also fine")]
        for o in outcomes:
            o.join(20)
        assert [o.status for o in outcomes] == [200, 503, 200], [o.body for o in outcomes]
        assert outcomes[1].error_type == "out_of_memory"
        stream = Outcome(base, {"prompt": "OOM", "max_tokens": 3, "stream": True})
        stream.join(20)
        assert stream.error_type == "out_of_memory"
        r = httpx.post(f"{base}/generate", json={"prompt": "OOM", "max_tokens": 3}, timeout=20)
        assert r.headers["retry-after"] == "5"
        assert not app.state.runtime.health.dead and _ready(base).status_code == 200


@pytest.mark.slow
def test_serve_exits_non_zero_after_the_engine_core_dies(tmp_path: Path, tiny_model_dir: Path) -> None:
    port, drain = free_port(), 2.0
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tests.dying_server", "--model", str(tiny_model_dir),
                             "--home", str(tmp_path), "--port", str(port), "--drain-timeout", str(drain)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_ready(base, 90, proc), (tmp_path / "server.log").read_text()
        core = int((tmp_path / "core.pid").read_text())
        running = [Outcome(base, {"prompt": "s", "max_tokens": 300, "stream": True}),
                   Outcome(base, {"prompt": "j", "max_tokens": 300})]
        _wait(lambda: bool(running[0].events), 10, "the stream never started")
        time.sleep(0.3)
        killed = time.monotonic()
        os.kill(core, signal.SIGKILL)
        for o in running:
            o.join(5)
            assert o.ended is not None and o.ended - killed < 2.0
            assert o.error_type == "engine_unavailable", (o.status, o.body, o.events)
        code = proc.wait(drain + 10)
        exited = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "server.log").read_text()
    assert code == EXIT_ENGINE_DEAD, text[-2000:]
    assert exited < drain + 5
    assert "engine died; draining" in text and "Application shutdown complete" in text


# ---- the reward model ---------------------------------------------------------------------------
@pytest.fixture
def rm_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    import torch

    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    save_head(torch.randn(hidden, dtype=torch.float64), tmp_path / "head.safetensors", {"test": True})
    return build_rm_folder(tiny_model_dir, tmp_path / "head.safetensors", tmp_path / "rm")


def test_reward_model_death_leaves_the_rest_serving(tmp_path: Path, tiny_model_dir: Path, rm_dir: Path) -> None:
    rm = TransformersRewardModel(str(rm_dir), device="cpu", dtype="float32", max_length=200, name="tiny-rm")
    app = create_app(make_settings(tmp_path, tiny_model_dir), drain_s=3.0,
                     reward_factory=lambda s: rm)
    score = {"prompt": "q", "responses": ["a", "b"], "method": "reward_model"}
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=10) as c:
        _wait(lambda: app.state.runtime.reward_state.ready, 30, "the RM never loaded")
        assert c.post("/score", json=score).status_code == 200
        rewards = rm.rewards

        def poisoned(conversations: Any) -> list[float]:
            raise RuntimeError(CUDA_FAULT)

        rm.rewards = poisoned  # type: ignore[method-assign]
        r = c.post("/score", json=score)
        assert r.status_code == 503 and r.json()["error"]["type"] == "reward_model_unavailable"
        rm.rewards = rewards  # type: ignore[method-assign]
        r = c.post("/score", json=score)  # dead for good: never retried on a poisoned context
        assert r.status_code == 503 and r.json()["error"]["type"] == "reward_model_unavailable"
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["reward_model_state"].startswith("failed: ")
        assert CUDA_FAULT in ready.json()["reward_model_state"]
        assert c.post("/generate", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
        assert c.post("/score", json={"prompt": "q", "responses": ["a"]}).status_code == 200
        assert not app.state.runtime.health.dead


def test_reward_model_load_that_fails_once_is_tried_again(tmp_path: Path, tiny_model_dir: Path,
                                                         rm_dir: Path) -> None:
    """The H100 soak: vLLM's start-up memory check failed in the RM's engine core because another
    process freed GPU memory meanwhile, and the RM was then unavailable for the whole run. A second
    attempt succeeds; while it waits the state stays 'loading' (503 reward_model_loading, not
    unavailable)."""
    calls: list[float] = []

    def flaky(s: Any) -> TransformersRewardModel:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise AssertionError("Error in memory profiling. Initial free memory 60.16 GiB, current free "
                                 "memory 60.89 GiB.")
        return TransformersRewardModel(str(rm_dir), device="cpu", dtype="float32", max_length=200, name="tiny-rm")

    app = create_app(make_settings(tmp_path, tiny_model_dir, reward_load_retry_s=1.0), drain_s=3.0,
                     reward_factory=flaky)
    score = {"prompt": "q", "responses": ["a", "b"], "method": "reward_model"}
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=10) as c:
        _wait(lambda: len(calls) >= 1, 30, "the RM was never tried")
        if len(calls) == 1:  # between the attempts
            r = c.post("/score", json=score)
            assert r.status_code == 503 and r.json()["error"]["type"] == "reward_model_loading", r.text
        _wait(lambda: app.state.runtime.reward_state.ready, 30, "the RM never loaded on the second try")
        assert len(calls) == 2 and calls[1] - calls[0] >= 0.9
        assert c.post("/score", json=score).status_code == 200


def test_reward_model_that_never_loads_fails_after_its_attempts(tmp_path: Path, tiny_model_dir: Path) -> None:
    calls: list[int] = []

    def broken(s: Any) -> Any:
        calls.append(1)
        raise RuntimeError("Engine core initialization failed.")

    app = create_app(make_settings(tmp_path, tiny_model_dir, reward_load_attempts=3, reward_load_retry_s=0.1),
                     drain_s=3.0, reward_factory=broken)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=10) as c:
        _wait(lambda: app.state.runtime.reward_state.phase.name == "FAILED", 30, "the RM never gave up")
        assert len(calls) == 3
        r = c.post("/score", json={"prompt": "q", "responses": ["a"], "method": "reward_model"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "reward_model_unavailable"
        assert "initialization failed" in r.json()["error"]["message"]
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["reward_model_state"].startswith("failed: ")
        assert c.post("/generate", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
