"""End to end: ``alignserve serve`` as a real process, called over HTTP, stopped with SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from .server_proc import start_server

pytestmark = pytest.mark.slow


def test_serve_process_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = start_server(tmp_path, tiny_model_dir, extra=["--drain-timeout", "5"])
    try:
        with httpx.Client(base_url=srv.base, timeout=60) as c:
            made = c.post("/profiles", json={"name": "ja", "principle": "Always answer in Japanese."})
            assert made.status_code == 201
            r = c.post("/generate", json={"prompt": "What is the capital of France?", "max_tokens": 6,
                                          "profile": "ja"})
            assert r.status_code == 200, r.text
            assert r.json()["alignment"]["profile"] == "ja@1"
            with c.stream("POST", "/generate", json={"prompt": "hello", "max_tokens": 5, "stream": True}) as s:
                body = "".join(s.iter_text())
            assert "event: done" in body
            assert c.post("/generate", json={"prompt": ""}).status_code == 422
            assert "alignserve_requests_total" in c.get("/metrics").text
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            code = srv.proc.wait(30)
        except Exception:
            srv.proc.kill()
            raise
    lines = srv.log().splitlines()
    # uvicorn re-raises SIGTERM once it has shut down gracefully, so -15 is a clean exit here
    assert code in (0, -signal.SIGTERM), lines[-5:]
    assert any("Application shutdown complete" in line for line in lines)
    assert any('"msg": "model ready"' in line for line in lines)  # structured JSON logs
    assert any('"route": "/generate"' in line and '"status": 200' in line for line in lines)
    assert (tmp_path / "profiles.db").is_file()
