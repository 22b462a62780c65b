"""A short soak in CI: every traffic class, a compile halfway, disconnects — no 5xx, nothing hung."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from bench.soak import Tally, get_once_more, passed, run, slope_mib_per_min

from .server_proc import start_server


def test_slope_by_hand() -> None:
    mib = 2**20
    assert slope_mib_per_min([(0, 0), (60, 2 * mib), (120, 4 * mib)]) == pytest.approx(2.0)
    assert slope_mib_per_min([(0, 5 * mib), (30, 5 * mib), (60, 5 * mib)]) == 0.0
    assert slope_mib_per_min([(0, 1)]) is None


def test_idempotent_reads_retry_once_and_every_transport_error_is_counted() -> None:
    """The first H200 soak died of one RemoteProtocolError on a periodic read; now it is retried,
    counted, and fails the run's verdict instead of ending the run."""
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if request.url.path == "/flaky" and calls["n"] == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text="ok")

    async def go() -> tuple[httpx.Response | None, httpx.Response | None, Tally]:
        tally = Tally()
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://t") as c:
            return await get_once_more(c, tally, "/flaky"), await get_once_more(c, tally, "/down"), tally

    flaky, down, tally = asyncio.run(go())
    assert flaky is not None and flaky.text == "ok" and down is None
    assert tally.transport_errors == {"RemoteProtocolError": 1, "ConnectError": 2}
    clean = {"total_5xx": 0, "hung": 0, "stream_errors": 0, "transport_errors": {}}
    assert passed(clean) and not passed({**clean, "transport_errors": tally.transport_errors})
    assert not passed({**clean, "hung": 1}) and not passed({**clean, "total_5xx": 2})


@pytest.mark.slow
def test_short_soak_with_a_compile(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = start_server(tmp_path, tiny_model_dir, extra=["--max-batch-size", "2", "--max-queue", "4"])
    try:
        res = asyncio.run(run(srv.base, duration=24, concurrency=8, max_tokens=8, hang_after=30, sample_every=2))
    finally:
        srv.proc.terminate()
        srv.proc.wait(30)
    assert passed(res), res
    errors = [line for line in srv.log().splitlines() if " ERROR " in line or '"level": "error"' in line]
    assert not errors, errors[:5]  # disconnects and invalid requests are not server errors
    assert res["compile"].get("job") == "succeeded", res["compile"]
    assert res["disconnects"] > 0
    assert res["routes"]["invalid"]["statuses"].keys() <= {"422", "429"}
    for kind in ("plain", "la", "stored", "stream", "score_judge"):
        assert res["routes"][kind]["ok"] > 0, (kind, res["routes"].get(kind))
    # the tiny model has no reward model: a clear 422, never a 5xx
    assert res["routes"]["score_reward_model"]["statuses"].keys() <= {"422", "429"}
