"""The vLLM engine's own request logic, on CPU against a stand-in for vLLM's ``AsyncLLM``.

vLLM cannot run in CI; what the engine adds around it can: the compile readout's bound on requests
in flight, the steering-slot admission (never more distinct specs at once than the model has
slots for), the prefix-cache salt of steered prompts, the head capture's gathering of the ranks'
replies, and the typed refusals (bad indices, an architecture without a layout) raised before
anything reaches vLLM. The GPU path itself is checked by ``bench/vllm_compile.py`` and
``bench/vllm_archs.py``.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from service.alignment.spec import SteeringVector
from service.engines.chat import ChatPrompts
from service.engines.decoder_layout import InvalidSteering, SteeringUnsupported
from service.engines.labels import LabelTokens
from service.engines.vllm.capture import pack
from service.engines.vllm.engine import VLLMEngine, VLLMSettings, _VLLMReadout
from service.engines.vllm.pairing import EXTRA_KEY
from service.engines.vllm.steer_tables import steering_key
from service.reward.judge import YES_NO


class FakeLLM:
    """Answers every request after a short wait; records what was in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.specs: dict[str, int] = {}
        self.peak_specs = 0
        self.prompts: list[dict[str, Any]] = []
        self.rpc: list[tuple[str, tuple[Any, ...]]] = []
        self.heads = torch.randn(2, 3, 4 * 5)
        self.ranks = 1

    @staticmethod
    def p_yes(tokens: list[int], steer: list[dict[str, Any]] | None) -> float:
        return 0.1 + 0.05 * len(tokens) + (0.2 if steer else 0.0)

    async def generate(self, prompt: dict[str, Any], sp: Any, request_id: str) -> AsyncIterator[Any]:
        steer = (sp.extra_args or {}).get(EXTRA_KEY, {}).get("steer")
        key = steering_key(steer) if steer else None
        self.prompts.append(prompt)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if key is not None:
            self.specs[key] = self.specs.get(key, 0) + 1
            self.peak_specs = max(self.peak_specs, len(self.specs))
        try:
            await asyncio.sleep(0.002)
            p = self.p_yes(prompt["prompt_token_ids"], steer)
            first, second = sp.logprob_token_ids  # the label tokens the engine asked for
            lp = {first: types.SimpleNamespace(logprob=math.log(p)),
                  second: types.SimpleNamespace(logprob=math.log(1 - p))}
            yield types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[lp])])
        finally:
            self.in_flight -= 1
            if key is not None:
                self.specs[key] -= 1
                if not self.specs[key]:
                    del self.specs[key]

    async def collective_rpc(self, method: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Each rank answers with its own heads' columns (contiguous blocks of the head axis)."""
        self.rpc.append((method, args))
        width = self.heads.shape[-1] // self.ranks
        return [pack(self.heads[: len(args[0]), :, r * width:(r + 1) * width]) for r in range(self.ranks)]


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Iterator[VLLMEngine]:
    from transformers import AutoTokenizer

    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)  # type: ignore[attr-defined]
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    eng = VLLMEngine.__new__(VLLMEngine)
    eng.settings = VLLMSettings(compile_concurrency=3, steer_slots=3 * 2 + 1)
    eng.steer_capacity = 2
    eng._steer_users, eng._steer_cond = {}, None
    eng.label_tokens = LabelTokens(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    eng.steerable = True
    eng.steering_info = [{"supported": True, "parallel": True, "capture": None}]
    eng.architecture = "Qwen2ForCausalLM"
    eng.num_layers, eng.num_heads, eng.head_dim, eng.hidden_size = 3, 4, 5, 6
    eng.max_model_len = 256
    eng.tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    eng.prompts = ChatPrompts(eng.tokenizer, None)
    eng.llm = FakeLLM()
    eng.loop = asyncio.new_event_loop()
    thread = threading.Thread(target=eng.loop.run_forever, daemon=True)
    thread.start()
    yield eng
    eng.loop.call_soon_threadsafe(eng.loop.stop)
    thread.join(5)


def patch(head: int, position: str = "last_prompt") -> list[SteeringVector]:
    return [SteeringVector(layer=0, head=head, vector=torch.full((5,), float(head)), position=position,  # type: ignore[arg-type]
                           replace=position == "last_prompt")]


def test_readout_bounds_requests_and_specs_in_flight(engine: VLLMEngine) -> None:
    prompts = [[1] * n for n in range(2, 8)]
    options = [[], patch(0), patch(1), patch(2), patch(3)]
    readout = _VLLMReadout(engine, prompts)
    got = readout.label_probability(options, YES_NO)
    fake: FakeLLM = engine.llm
    want = torch.tensor([[fake.p_yes(p, [{}] if o else None) for p in prompts] for o in options])
    torch.testing.assert_close(got, want)
    assert fake.peak == 3  # compile_concurrency
    assert fake.peak_specs <= engine.steer_capacity  # a fifth spec would find no slot in the worker
    assert all("cache_salt" not in p for p in fake.prompts)  # readout patches may share the prefix cache
    assert not engine._steer_users

    engine.settings.compile_concurrency = 0  # unbounded: every request of an option at once
    fake.peak = 0
    readout.label_probability([[], []], YES_NO)
    assert fake.peak == 2 * len(prompts)
    with pytest.raises(ValueError, match="two tokens"):
        _VLLMReadout(engine, [[1]])


def test_scoring_with_generation_steering_is_salted_and_admitted(engine: VLLMEngine) -> None:
    fake: FakeLLM = engine.llm

    async def many() -> list[list[float]]:
        return list(await asyncio.gather(*(engine._label_probabilities([[1, 2, 3]], (7, 8), patch(h, "generated"))
                                           for h in range(4))))

    out = engine.call(many())
    assert [round(x[0], 6) for x in out] == [round(fake.p_yes([1, 2, 3], [{}]), 6)] * 4
    assert fake.peak_specs <= engine.steer_capacity
    salts = {p.get("cache_salt") for p in fake.prompts}
    assert None not in salts and len(salts) == 4  # one salt per steering spec


def test_capture_unpacks_the_worker_reply(engine: VLLMEngine) -> None:
    convs = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "Is Paris in France?"}]]
    acts = engine.capture_head_activations(convs, ["yes", "no"])
    fake: FakeLLM = engine.llm
    method, args = fake.rpc[-1]
    assert method == "alignserve_capture_heads" and len(args[0]) == 2
    assert args[0][0][-1] == engine.tokenizer.encode("yes", add_special_tokens=False)[-1]
    assert acts.shape == (2, 3, 4, 5)
    torch.testing.assert_close(acts, fake.heads[:2].view(2, 3, 4, 5))
    fake.ranks = 2  # TP=2: rank 0 holds heads 0-1, rank 1 heads 2-3
    engine.steering_info = [{"supported": True, "parallel": True, "capture": None}] * 2
    torch.testing.assert_close(engine.capture_head_activations(convs, ["yes", "no"]), fake.heads[:2].view(2, 3, 4, 5))
    engine.steering_info = [{"supported": True, "parallel": True, "capture": "no Attention module"}] * 2
    with pytest.raises(SteeringUnsupported, match="Qwen2ForCausalLM: head capture: no Attention module"):
        engine.capture_head_activations(convs)
    engine.steerable = False
    engine.steering_info = [{"supported": False, "reason": "no decoder layers found"}]
    with pytest.raises(SteeringUnsupported, match="Qwen2ForCausalLM: no decoder layers found"):
        engine.capture_head_activations(convs)


def test_steering_is_refused_before_it_reaches_vllm(engine: VLLMEngine) -> None:
    from service.alignment.sampling import SamplingParams
    from service.alignment.spec import AlignmentSpec
    from service.engines.base import GenerationRequest

    fake: FakeLLM = engine.llm

    def req(vec: SteeringVector) -> GenerationRequest:
        return GenerationRequest("r", [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2),
                                 AlignmentSpec(steering=(vec,)))

    bad = {"layer 3 outside": SteeringVector(layer=3, vector=torch.ones(6)),
           "head 4 outside": SteeringVector(layer=0, head=4, vector=torch.ones(5)),
           "5 entries": SteeringVector(layer=0, vector=torch.ones(5))}
    for msg, vec in bad.items():
        with pytest.raises(InvalidSteering, match=msg):
            engine.generate([req(vec)])
        with pytest.raises(InvalidSteering, match=msg):
            engine.label_probability([[{"role": "user", "content": "hi"}]], YES_NO, [vec])
    engine.steerable = False
    engine.steering_info = [{"supported": False, "reason": "no decoder layers found"}]
    with pytest.raises(SteeringUnsupported, match="Qwen2ForCausalLM") as info:
        engine.generate([req(SteeringVector(layer=0, vector=torch.ones(6)))])
    assert info.value.architecture == "Qwen2ForCausalLM"
    with pytest.raises(SteeringUnsupported):
        engine.open_readout([[{"role": "user", "content": "hi"}]])
    assert not fake.prompts and not engine._steer_users  # nothing was submitted, no slot held
