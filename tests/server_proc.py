"""Start ``alignserve serve`` as a real child process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    base: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(home: Path, model: Path, port: int | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, ready_timeout: float = 90) -> ServerProc:
    port = port or free_port()
    full_env = {**os.environ, "ALIGNSERVE_MAX_MODEL_LEN": "512", "ALIGNSERVE_DTYPE": "float32", **(env or {})}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--model", str(model), "--port", str(port),
           "--home", str(home), "--device", "cpu", *(extra or [])]
    log_path = home / f"server-{port}.log"
    proc = subprocess.Popen(cmd, env=full_env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    srv = ServerProc(proc, f"http://127.0.0.1:{port}", log_path)
    if wait_ready(srv.base, ready_timeout, proc):
        return srv
    proc.kill()
    raise RuntimeError("server never became ready:\n" + srv.log())


def wait_ready(base: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server in this process (so tests can reach into it)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base):
            raise RuntimeError("in-process server never became ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(15)
