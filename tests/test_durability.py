"""Crash and shutdown behaviour of the real server process."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.store.profiles import ProfileStore

from .server_proc import start_server

pytestmark = pytest.mark.slow


def test_sigkill_during_profile_writes_loses_nothing_acknowledged(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = start_server(tmp_path, tiny_model_dir)
    acked: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def writer(worker: int) -> None:
        with httpx.Client(base_url=srv.base, timeout=5) as c:
            i = 0
            while not stop.is_set():
                principle = f"principle {worker}-{i} " + "x" * (i % 50)
                try:
                    r = c.post("/profiles", json={"name": f"w{worker}", "principle": principle})
                except httpx.TransportError:
                    return
                if r.status_code == 201:
                    acked.append((f"w{worker}", r.json()["version"], principle))
                i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 20, "the writers should have been acknowledged many times before the kill"

    db = tmp_path / "profiles.db"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    store = ProfileStore(f"sqlite:///{db}")
    for name, version, principle in acked:
        rec = store.get(f"{name}@{version}")
        assert rec is not None, (name, version)
        assert rec.spec["principle"] == principle
    for name in {a[0] for a in acked}:
        versions = [r.version for r in store.versions(name)]
        assert versions == list(range(1, len(versions) + 1))  # no gaps, no half-written rows
        for r in store.versions(name):
            json.dumps(r.spec)


def test_sigterm_drains_in_flight_stream(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = start_server(tmp_path, tiny_model_dir, extra=["--drain-timeout", "20"])
    events: list[str] = []
    with httpx.stream("POST", f"{srv.base}/generate", timeout=30,
                      json={"prompt": "Tell me a long story.", "max_tokens": 300, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
                if len(events) == 2:  # generation under way: ask the server to stop
                    srv.proc.send_signal(signal.SIGTERM)
                    time.sleep(0.2)
                    with pytest.raises(httpx.TransportError):  # no new connections while draining
                        httpx.get(f"{srv.base}/healthz", timeout=2)
    assert events[-1] == "done", events[-5:]
    code = srv.proc.wait(30)
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in srv.log()
