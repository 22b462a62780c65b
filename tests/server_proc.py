"""Start ``alignserve serve`` as a real child process for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    deadline = time.time() + ready_timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{srv.base}/readyz", timeout=2).status_code == 200:
                return srv
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited:\n" + srv.log())
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server never became ready:\n" + srv.log())
