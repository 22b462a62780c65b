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


def test_hot_frames_share_by_innermost_frame(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_text("main;a;b (x.py:1) 3\nmain;c (y.py:2) 1\n")
    assert hot_frames(raw) == [("b (x.py:1)", 0.75), ("c (y.py:2)", 0.25)]
