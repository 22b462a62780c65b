"""A short soak in CI: every traffic class, a compile halfway, disconnects — no 5xx, nothing hung."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.soak import run, slope_mib_per_min

from .server_proc import start_server


def test_slope_by_hand() -> None:
    mib = 2**20
    assert slope_mib_per_min([(0, 0), (60, 2 * mib), (120, 4 * mib)]) == pytest.approx(2.0)
    assert slope_mib_per_min([(0, 5 * mib), (30, 5 * mib), (60, 5 * mib)]) == 0.0
    assert slope_mib_per_min([(0, 1)]) is None


@pytest.mark.slow
def test_short_soak_with_a_compile(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = start_server(tmp_path, tiny_model_dir, extra=["--max-batch-size", "2", "--max-queue", "4"])
    try:
        res = asyncio.run(run(srv.base, duration=24, concurrency=8, max_tokens=8, hang_after=30, sample_every=2))
    finally:
        srv.proc.terminate()
        srv.proc.wait(30)
    assert res["total_5xx"] == 0 and res["hung"] == 0 and res["stream_errors"] == 0, res
    assert res["compile"].get("job") == "succeeded", res["compile"]
    assert res["disconnects"] > 0
    assert res["routes"]["invalid"]["statuses"].keys() <= {"422", "429"}
    for kind in ("plain", "la", "stored", "stream", "score_judge"):
        assert res["routes"][kind]["ok"] > 0, (kind, res["routes"].get(kind))
    # the tiny model has no reward model: a clear 422, never a 5xx
    assert res["routes"]["score_reward_model"]["statuses"].keys() <= {"422", "429"}
