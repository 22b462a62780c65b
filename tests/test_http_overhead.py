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
