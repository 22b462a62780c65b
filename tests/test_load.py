"""A short bounded load run in CI: ramp past capacity; no 5xx, nothing hung, memory stable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from bench.load import run

from .server_proc import start_server

pytestmark = pytest.mark.slow


def test_load_ramp_past_capacity(tmp_path: Path, tiny_model_dir: Path) -> None:
    # capacity = 2 decoding + 2 queued; the last level is twice that
    srv = start_server(tmp_path, tiny_model_dir, extra=["--max-batch-size", "2", "--max-queue", "2"])
    try:
        result = asyncio.run(run(srv.base, [1, 4, 8], duration=15, max_tokens=16, hang_after=30))
    finally:
        srv.proc.terminate()
        srv.proc.wait(30)
    last = result["stages"][-1]
    assert result["total_5xx"] == 0 and result["total_hung"] == 0, result
    assert last["statuses"].get("429", 0) > 0, "twice the capacity must be refused, not queued without bound"
    assert all(s["ok"] > 0 for s in result["stages"])
    rss0 = result["memory_start"]["process_resident_memory_bytes"]
    rss1 = result["memory_end"]["process_resident_memory_bytes"]
    assert rss1 - rss0 < 300 * 2**20, (rss0, rss1)


def test_load_mixed_traffic(tmp_path: Path, tiny_model_dir: Path) -> None:
    """--mix: stored profile, /score and invalid requests; invalid ones are 422, nothing else fails."""
    srv = start_server(tmp_path, tiny_model_dir)
    try:
        result = asyncio.run(run(srv.base, [2], duration=10, max_tokens=8, hang_after=30, mix=True))
        metrics = httpx.get(srv.base + "/metrics").text
    finally:
        srv.proc.terminate()
        srv.proc.wait(30)
    stage = result["stages"][0]
    assert result["total_5xx"] == 0 and result["total_hung"] == 0, result
    assert set(stage["statuses"]) <= {"200", "422"}, stage
    assert stage["statuses"].get("200", 0) > 5, stage
    assert 'route="/score"' in metrics and 'profile="concise"' in metrics
