"""The vLLM engine's generation streams, on CPU against a stand-in for ``AsyncLLM``.

What the engine asks vLLM for matters for speed (#18): the shown stream takes DELTA outputs (no
re-sent prefixes every step); an LA pair's plain stream is never shown, so it is not detokenised,
has no stop strings and reports only its final output. And what comes back must add up to the
same text and tokens as before.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.engines.base import GenerationRequest, TokenEvent, completion_prompt
from service.engines.chat import ChatPrompts
from service.engines.vllm.engine import VLLMEngine, VLLMSettings


class Kind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class FakeLLM:
    """Emits ``tokens`` one per step as DELTA outputs (text = the token id in brackets)."""

    def __init__(self, tokens: list[int], step_s: float = 0.001) -> None:
        self.tokens = tokens
        self.step_s = step_s
        self.params: dict[str, Any] = {}
        self.prompts: dict[str, list[int]] = {}
        self.aborted: list[str] = []

    async def generate(self, prompt: dict[str, Any], sp: Any, request_id: str) -> AsyncIterator[Any]:
        self.params[request_id] = sp
        self.prompts[request_id] = list(prompt["prompt_token_ids"])
        for i, tok in enumerate(self.tokens[: sp.max_tokens]):
            await asyncio.sleep(self.step_s)
            last = i == min(len(self.tokens), sp.max_tokens) - 1
            if sp.output_kind is Kind.FINAL_ONLY and not last:
                continue
            ids = self.tokens[: i + 1] if sp.output_kind is Kind.FINAL_ONLY else [tok]
            text = "" if not sp.detokenize else f"[{tok}]"
            yield types.SimpleNamespace(outputs=[types.SimpleNamespace(
                token_ids=ids, text=text, finish_reason="length" if last else None)])

    async def abort(self, ids: list[str]) -> None:
        self.aborted.extend(ids)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Iterator[VLLMEngine]:
    from transformers import AutoTokenizer

    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = Kind  # type: ignore[attr-defined]
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict  # type: ignore[attr-defined]
    for name, mod in (("vllm", fake), ("vllm.sampling_params", sampling), ("vllm.inputs", inputs)):
        monkeypatch.setitem(sys.modules, name, mod)
    eng = VLLMEngine.__new__(VLLMEngine)
    eng.settings = VLLMSettings()
    eng.steer_capacity, eng._steer_users, eng._steer_cond = 2, {}, None
    eng.steerable = True
    eng.max_model_len = 256
    eng.kv_tokens, eng.kv_block = None, 16
    eng.cancel_poll_s = 0.01
    eng.tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    eng.prompts = ChatPrompts(eng.tokenizer, "sys")
    eng.llm = FakeLLM([11, 12, 13, 14])
    eng.loop = asyncio.new_event_loop()
    thread = threading.Thread(target=eng.loop.run_forever, daemon=True)
    thread.start()
    yield eng
    eng.loop.call_soon_threadsafe(eng.loop.stop)
    thread.join(5)


def _request(la: bool, stop: tuple[str, ...] = ()) -> GenerationRequest:
    align = AlignmentSpec(la=LinearAlignmentConfig(principle="Be brief.")) if la else AlignmentSpec()
    return GenerationRequest("r1", [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=4, stop=stop),
                             align)


def test_plain_request_reads_delta_outputs(engine: VLLMEngine) -> None:
    seen: list[TokenEvent] = []
    req = _request(la=False, stop=("x",))
    req.on_token = seen.append
    res = engine.submit(req).result(10)
    assert res.token_ids == [11, 12, 13, 14] and res.text == "[11][12][13][14]"
    assert [e.text for e in seen] == ["[11]", "[12]", "[13]", "[14]"] and [e.index for e in seen] == [0, 1, 2, 3]
    (sp,) = engine.llm.params.values()
    assert sp.output_kind is Kind.DELTA and sp.detokenize and sp.stop == ["x"]
    assert sp.skip_clone  # a fresh object per stream: vLLM's AsyncLLM would otherwise deep-copy it


def test_la_plain_stream_is_hidden(engine: VLLMEngine) -> None:
    res = engine.submit(_request(la=True, stop=("x",))).result(10)
    assert res.token_ids == [11, 12, 13, 14] and res.text == "[11][12][13][14]"
    params = engine.llm.params
    lead = next(sp for rid, sp in params.items() if rid.endswith("-p"))
    plain = next(sp for rid, sp in params.items() if rid.endswith("-b"))
    assert lead.output_kind is Kind.DELTA and lead.detokenize and lead.stop == ["x"]
    assert plain.output_kind is Kind.FINAL_ONLY and not plain.detokenize and plain.stop is None
    assert lead.max_tokens == plain.max_tokens == 4 and lead is not plain and lead.skip_clone and plain.skip_clone
    assert sorted(engine.llm.aborted) == sorted(params)  # both streams released at the end


@pytest.mark.parametrize("la", [False, True])
def test_cancelled_request_settles_as_cancelled(engine: VLLMEngine, la: bool) -> None:
    """A client that leaves while its request waits inside vLLM (no output yet to notice the flag on)
    gets a cancelled result, not an error: the soak on the H200 logged 328 'Result is not set.'
    failures from reading the cancelled task before it had finished."""
    engine.llm = FakeLLM([11, 12, 13, 14], step_s=5.0)
    req = _request(la=la)
    fut = engine.submit(req)
    time.sleep(0.05)
    req.cancelled.set()
    res = fut.result(3)
    assert res.finish_reason == "cancelled" and res.token_ids == []
    assert sorted(engine.llm.aborted) == sorted(engine.llm.params)


def test_steering_spec_is_converted_once_per_request(engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from service.alignment.spec import SteeringVector
    from service.engines.vllm import steer_tables

    calls = {"args": 0, "key": 0}
    real_args, real_key = steer_tables.vectors_to_args, steer_tables.steering_key

    def count_args(v: Any) -> Any:
        calls["args"] += 1
        return real_args(v)

    def count_key(a: Any) -> Any:
        calls["key"] += 1
        return real_key(a)

    monkeypatch.setattr(steer_tables, "vectors_to_args", count_args)
    monkeypatch.setattr(steer_tables, "steering_key", count_key)
    engine.validate_steering = lambda vectors: None  # type: ignore[method-assign]
    req = _request(la=True)
    req.alignment = AlignmentSpec(la=req.alignment.la, steering=(SteeringVector(layer=0, vector=torch.ones(4)),))
    engine.submit(req).result(10)
    assert calls == {"args": 1, "key": 1}  # not once per stream, admission and prompt
    sps = list(engine.llm.params.values())
    assert len(sps) == 2 and all(sp.extra_args["alignserve"]["steer"][0]["layer"] == 0 for sp in sps)


def test_raw_prompt_streams_are_the_tokenizers_ids(engine: VLLMEngine) -> None:
    """A raw text prompt reaches vLLM as ``tokenizer(text)`` (no template, no default system), its
    principle stream as ``tokenizer(principle + "\n\n" + text)``."""
    text, tok = "The capital of France is", engine.tokenizer
    req = _request(la=True)
    req.messages = completion_prompt(text)
    res = engine.submit(req).result(10)
    prompts = engine.llm.prompts
    lead = next(p for rid, p in prompts.items() if rid.endswith("-p"))
    plain = next(p for rid, p in prompts.items() if rid.endswith("-b"))
    assert plain == tok(text)["input_ids"] and lead == tok(f"Be brief.\n\n{text}")["input_ids"]
    assert (res.prompt_tokens, res.principle_prompt_tokens) == (len(plain), len(lead))
    assert engine.prompt_size(req.messages, "Be brief.").plain == len(plain)


def test_la_pair_larger_than_the_kv_cache_is_refused(engine: VLLMEngine) -> None:
    """An LA pair needs both sequences in the KV cache at once: a pair that cannot fit would never
    be scheduled, so it is refused (413) before vLLM sees it; a plain request of the same size fits."""
    from service.domain.errors import TooLarge
    from service.domain.generation import rejected
    from service.engines.base import RequestRejected

    plain_len = len(engine.prompts.streams(_request(la=False).messages, None, "system")[0])
    engine.kv_tokens = -(-(plain_len + 4) // 16) * 16 + 16  # one plain stream fits, a pair does not
    assert engine.submit(_request(la=False)).result(10).token_ids == [11, 12, 13, 14]
    with pytest.raises(RequestRejected) as err:
        engine.submit(_request(la=True)).result(10)
    assert err.value.code == "exceeds_kv_budget" and "KV-cache" in str(err.value)
    assert isinstance(rejected(err.value), TooLarge)
    assert not any(rid.endswith(("-p", "-b")) for rid in engine.llm.params)  # nothing reached vLLM
    engine.kv_tokens = 4096
    assert engine.submit(_request(la=True)).result(10).token_ids == [11, 12, 13, 14]


def test_kv_budget_rounds_each_sequence_to_blocks() -> None:
    from service.engines.base import RequestRejected
    from service.engines.vllm.engine import check_kv_budget

    check_kv_budget(None, 16, [10_000, 10_000], 10_000)  # unknown cache: no check
    check_kv_budget(64, 16, [10, 10], 6)  # 16 tokens -> 1 block each: 32 <= 64
    check_kv_budget(64, 16, [17, 17], 15)  # 32 + 32 = 64 fits exactly
    with pytest.raises(RequestRejected):
        check_kv_budget(64, 16, [17, 17], 16)  # 33 tokens -> 3 blocks each = 96 > 64
    with pytest.raises(RequestRejected):
        check_kv_budget(56, 16, [1, 1], 24)  # 25 -> 2 blocks each: 64 > 56 (unrounded, 50 would fit)
