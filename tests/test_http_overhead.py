"""The HTTP-overhead bench's pure parts: the zero-cost stand-in engine and the profile summary."""

from __future__ import annotations

from pathlib import Path

from bench.http_overhead import StepEngine, hot_frames
from service.alignment.sampling import SamplingParams
from service.engines.base import GenerationRequest, TokenEvent


def test_step_engine_emits_one_token_per_step_and_finishes() -> None:
    eng = StepEngine(0.001)
    seen: list[TokenEvent] = []
    req = GenerationRequest("r", [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=5))
    req.on_token = seen.append
    res = eng.submit(req).result(5)
    eng.close()
    assert res.finish_reason == "length" and res.completion_tokens == 5
    assert [e.index for e in seen] == [0, 1, 2, 3, 4]


def test_hot_frames_self_and_inclusive_shares(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_text("main (lib/x.py:1);a (service/x.py:9);b (lib/y.py:1) 3\nmain (lib/x.py:1);c (service/y.py:2) 1\n"
                   "main (lib/x.py:1);a (service/x.py:7) 1\n")
    own, inclusive = hot_frames(raw)
    assert own == [("b (lib/y.py:1)", 0.6), ("c (service/y.py:2)", 0.2), ("a (service/x.py:7)", 0.2)]
    assert inclusive == [("a", 0.8), ("c", 0.2)]  # our own functions only, with what they call


def test_median_row_takes_per_field_medians_and_the_range() -> None:
    from bench.http_overhead import median_row

    rows = [{"concurrency": 64, "output_tok_s": v, "server_cpu_us_per_token": c}
            for v, c in ((10, 30), (30, 20), (20, 25))]
    out = median_row("uvloop", rows)
    assert out["loop"] == "uvloop" and out["rounds"] == 3 and out["concurrency"] == 64
    assert out["output_tok_s"] == 20 and out["server_cpu_us_per_token"] == 25 and out["output_tok_s_range"] == [10, 30]


def test_server_runs_on_uvloop_by_default_and_asyncio_on_request() -> None:
    """uvloop is a dependency on Linux: the default ("auto") must pick it; --loop asyncio must not."""
    import asyncio

    import uvloop

    from service.api.http_server import server_config
    from service.config import Settings

    auto = server_config(object(), Settings(), 5.0).get_loop_factory()
    assert auto is not None and isinstance(auto(), uvloop.Loop)
    plain = server_config(object(), Settings(event_loop="asyncio"), 5.0).get_loop_factory()
    assert plain is not None and not isinstance(plain(), uvloop.Loop) and isinstance(plain(), asyncio.AbstractEventLoop)


def test_server_parses_with_httptools_by_default_and_h11_on_request() -> None:
    from service.api.http_server import GuardedH11Protocol, GuardedHttpToolsProtocol, server_config
    from service.config import Settings

    default = server_config(object(), Settings(), 5.0).http
    h11 = server_config(object(), Settings(http="h11"), 5.0).http
    assert isinstance(default, type) and issubclass(default, GuardedHttpToolsProtocol)
    assert isinstance(h11, type) and issubclass(h11, GuardedH11Protocol)
    assert not issubclass(h11, GuardedHttpToolsProtocol)
    assert default.limits.max_header_bytes == Settings().max_header_bytes  # type: ignore[attr-defined]
