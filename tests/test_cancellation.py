"""Client disconnects cancel generation and free engine state (real uvicorn server, slowed engine)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app

from .conftest import make_settings
from .server_proc import serve_in_thread


@pytest.fixture
def slow_server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[str, Any]]:
    app = create_app(make_settings(tmp_path, tiny_model_dir, max_model_len=512, max_tokens_limit=400))
    with serve_in_thread(app) as base:
        services = app.state.runtime
        forward = services.engine._forward

        def slow_forward(*args: Any, **kwargs: Any) -> Any:  # 30 ms a step: long enough to hang up mid-way
            time.sleep(0.03)
            return forward(*args, **kwargs)

        services.engine._forward = slow_forward
        yield base, services


def _wait_idle(services: Any, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and services.worker.live_requests:
        time.sleep(0.05)
    assert not services.worker.live_requests, services.worker.live_requests


def _cancelled(base: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith('alignserve_generations_total{finish_reason="cancelled"}'):
            return float(line.split()[-1])
    return 0.0


def test_disconnect_mid_stream_cancels(slow_server: tuple[str, Any]) -> None:
    base, services = slow_server
    payload = {"prompt": "Tell me a long story.", "max_tokens": 400, "stream": True}
    started = time.time()
    with httpx.stream("POST", f"{base}/generate", json=payload, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("event: token"):
                break  # hang up after the first token
    assert services.worker.live_requests or time.time() - started < 5
    _wait_idle(services)
    assert time.time() - started < 8  # 400 tokens would take > 12 s at 30 ms a step
    deadline = time.time() + 5
    while _cancelled(base) < 1 and time.time() < deadline:
        time.sleep(0.1)
    assert _cancelled(base) == 1
    assert "alignserve_engine_live_requests 0.0" in httpx.get(f"{base}/metrics").text


def test_disconnect_while_waiting_for_json_cancels(slow_server: tuple[str, Any]) -> None:
    base, services = slow_server
    started = time.time()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/generate", json={"prompt": "Tell me a long story.", "max_tokens": 400}, timeout=1.0)
    _wait_idle(services)
    assert time.time() - started < 8
    # the server is still healthy and serves the next request
    r = httpx.post(f"{base}/generate", json={"prompt": "hi", "max_tokens": 3}, timeout=30)
    assert r.status_code == 200


def test_request_timeout_is_504_and_frees_the_engine(tmp_path: Path, tiny_model_dir: Path) -> None:
    from .conftest import open_client

    c = open_client(make_settings(tmp_path, tiny_model_dir, request_timeout_s=0.5, max_tokens_limit=200))
    try:
        services = c.app.state.runtime  # type: ignore[attr-defined]
        forward = services.engine._forward

        def slow_forward(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.05)
            return forward(*args, **kwargs)

        services.engine._forward = slow_forward
        r = c.post("/generate", json={"prompt": "Tell me a long story.", "max_tokens": 200})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        _wait_idle(services, 5)
        services.engine._forward = forward
        assert c.post("/generate", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    finally:
        c.__exit__(None, None, None)
