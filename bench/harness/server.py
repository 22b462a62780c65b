"""``alignserve serve`` as a child process, for benchmarks that drive the real server over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """Starts ``python -m service.cli serve --port PORT --log-format json ARGS`` (this checkout's
    code, output to ``log``); ``wait_ready`` then ``stop``, or use it as a context manager (stops
    on exit; the stop report stays in ``shutdown``)."""

    def __init__(self, args: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.shutdown: dict[str, Any] | None = None
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-format", "json", *args]
        print("starting:", " ".join(cmd), flush=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def wait_ready(self, timeout: float) -> float:
        """Seconds until /readyz answered 200; RuntimeError (with the log's tail) if the server
        exits, reports a failed model load, or is not ready within ``timeout``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} while loading\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200:
                    return time.monotonic() - t0
                if r.status_code == 503 and r.json().get("status") == "failed":
                    raise RuntimeError(f"model failed to load: {r.text}\n{self.log_tail()}")
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout:g}s\n{self.log_tail()}")

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        """SIGTERM (the server drains), SIGKILL after ``timeout``: ``{"exit_code", "stop_s"}``
        (exit_code None when it had to be killed). Calling it again returns the first report."""
        if self.shutdown is None:
            t0 = time.monotonic()
            code: int | None
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    code = None
            else:
                code = self.proc.returncode
            self.shutdown = {"exit_code": code, "stop_s": round(time.monotonic() - t0, 2)}
        return self.shutdown

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def metric_values(text: str, prefix: str = "alignserve_") -> dict[str, float]:
    """Samples of a Prometheus text page whose name starts with ``prefix`` ({"name{labels}": value})."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
