"""End to end: ``alignserve serve`` as a real process, called over HTTP, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_process_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "ALIGNSERVE_MAX_MODEL_LEN": "256", "ALIGNSERVE_DTYPE": "float32"}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--model", str(tiny_model_dir), "--port", str(port),
           "--home", str(tmp_path), "--device", "cpu", "--drain-timeout", "5"]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("server never became ready:\n" + (tmp_path / "server.log").read_text())
        with httpx.Client(base_url=base, timeout=60) as c:
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
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log.close()
    lines = (tmp_path / "server.log").read_text().splitlines()
    # uvicorn re-raises SIGTERM once it has shut down gracefully, so -15 is a clean exit here
    assert code in (0, -signal.SIGTERM), lines[-5:]
    assert any("Application shutdown complete" in line for line in lines)
    assert any('"msg": "model ready"' in line for line in lines)  # structured JSON logs
    assert any('"route": "/generate"' in line and '"status": 200' in line for line in lines)
    assert (tmp_path / "profiles.db").is_file()
