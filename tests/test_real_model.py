"""The embedded 0.5B model (slow tier; CI runs it): provisioning fidelity and LA in the intended direction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.engines.base import GenerationRequest
from service.engines.transformers.engine import TransformersEngine

pytestmark = pytest.mark.slow

STEER_STRENGTH = 4.0
PROMPTS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Give me a tip for learning to cook.",
    "What does a compiler do?",
    "How do I stay focused while studying?",
]


def japanese_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    jp = sum(1 for c in chars if "\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff")
    return jp / max(1, len(chars))


@pytest.fixture(scope="module")
def engine(real_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(str(real_model_dir), device="cpu", dtype="float32",
                              default_system="You are a helpful assistant.")


def run(engine: TransformersEngine, la: LinearAlignmentConfig | None, max_tokens: int = 40) -> list:
    reqs = [GenerationRequest(str(i), [{"role": "user", "content": p}], SamplingParams(max_tokens=max_tokens),
                              AlignmentSpec(la=la)) for i, p in enumerate(PROMPTS)]
    return engine.generate(reqs)


def test_japanese_principle_switches_script(engine: TransformersEngine) -> None:
    base = run(engine, None)
    la = run(engine, LinearAlignmentConfig("Always answer in Japanese.", strength=3.0))
    base_share = sum(japanese_share(r.text) for r in base) / len(base)
    la_share = sum(japanese_share(r.text) for r in la) / len(la)
    print(f"japanese share: base {base_share:.2f} -> LA {la_share:.2f}")
    assert base_share < 0.1
    assert la_share > 0.5
    assert sum(japanese_share(r.text) > 0.3 for r in la) >= 4


def test_short_principle_shortens_answers_beyond_strength_zero(engine: TransformersEngine) -> None:
    principle = "Answer in one short sentence."
    base = run(engine, None)
    r0 = run(engine, LinearAlignmentConfig(principle, strength=0.0))
    r3 = run(engine, LinearAlignmentConfig(principle, strength=3.0))
    mean = [sum(r.completion_tokens for r in rs) / len(rs) for rs in (base, r0, r3)]
    print(f"mean completion tokens: base {mean[0]:.1f}, r=0 {mean[1]:.1f}, r=3 {mean[2]:.1f}")
    assert mean[2] < mean[1] < mean[0]


def test_converted_weights_match_the_gguf(real_model_dir: Path) -> None:
    """The HF folder we ship to both engines reproduces transformers' own GGUF loading."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = real_model_dir.parent / "model.gguf"
    if not gguf.is_file():
        pytest.skip("GGUF was removed after conversion")
    tok = AutoTokenizer.from_pretrained(real_model_dir)
    ids = tok("The capital of France is Paris. The capital of Japan is", return_tensors="pt").input_ids
    with torch.inference_mode():
        ours = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)(ids).logits[0]
        ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)(ids).logits[0]
    rel = float((ours - ref).norm() / ref.norm())
    print(f"relative logit error vs GGUF load: {rel:.4f}")
    assert rel < 0.01  # bf16 storage of the de-quantized weights
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_activation_rm_profile_moves_scores_and_generations_toward_french(engine: TransformersEngine) -> None:
    """The 'french' profile compiled from 24 labelled examples: its steering must make more generated
    answers French than steering off. (Its scores are reported, not asserted: on this 0.5B model the
    patched judge barely separates French from English — bench/results/arm_steering_cpu.md.)"""
    import json

    from service.language.fidelity import LanguageDetector
    from service.reward.activation_rm import CompileSettings, LabelledExample, compile_activation_rm
    from service.reward.judge import YES_NO, judge_conversation

    data = json.loads((Path(__file__).resolve().parents[1] / "bench" / "data" / "french_profile.json").read_text())
    train = [LabelledExample(q, fr, True) for q, fr, _ in data["train"]]
    train += [LabelledExample(q, en, False) for q, _, en in data["train"]]
    compiled = compile_activation_rm(
        lambda call: call(engine), train, data["rubric"],
        CompileSettings(num_heads=16, shots_per_context=2, max_contexts=16, iterations=20),
        (engine.num_layers, engine.num_heads, engine.head_dim, engine.max_model_len), "qwen-0.5b")
    test = data["test"]
    readout = engine.open_readout([judge_conversation(q, fr, data["rubric"]) for q, fr, _ in test]
                                  + [judge_conversation(q, en, data["rubric"]) for q, _, en in test])
    p = readout.label_probability([[], compiled.scoring_steering()], YES_NO)
    readout.close()
    n = len(test)
    margin = (p[:, :n] - p[:, n:]).mean(1)
    print(f"heads {compiled.heads}; French-English P(Yes) margin: judge {margin[0]:.3f}, ARM {margin[1]:.3f}")
    assert bool(((p >= 0) & (p <= 1)).all())

    detector = LanguageDetector()

    def french_share(strength: float) -> float:
        steering = tuple(compiled.generation_steering(strength))
        reqs = [GenerationRequest(f"{strength}-{i}", [{"role": "user", "content": q}], SamplingParams(max_tokens=30),
                                  AlignmentSpec(steering=steering)) for i, (q, _, _) in enumerate(test)]
        return sum(detector.detect(r.text) == "fr" for r in engine.generate(reqs)) / n

    off, on = french_share(0.0), french_share(STEER_STRENGTH)
    print(f"French answers: steering off {off:.2f} -> strength {STEER_STRENGTH} {on:.2f}")
    assert on > off


def test_shipped_reward_model_prefers_the_chosen_response_in_english_and_japanese(real_model_dir: Path) -> None:
    """The shipped English RM, assembled and loaded the way `serve` does, on held-out pairs."""
    import json

    from service.config import EMBEDDED_MODEL, Settings
    from service.reward.factory import resolve_reward_model
    from service.reward.reward_model import TransformersRewardModel, rm_conversation

    from .conftest import REAL_MODEL_HOME

    resolved = resolve_reward_model(Settings(model=EMBEDDED_MODEL, reward_model="auto", home=REAL_MODEL_HOME))
    assert resolved is not None
    rm = TransformersRewardModel(resolved[0], device="cpu", dtype="float32", max_length=2048)
    data = Path(__file__).resolve().parents[1] / "bench" / "data" / "cross_lingual_pairs.json"
    items = [it for it in json.loads(data.read_text())["items"]
             if it["category"] in ("harmlessness", "helpfulness", "relevance", "tone")]
    for lang in ("en", "ja"):
        chosen = rm.rewards([rm_conversation(it[lang][0], it[lang][1]) for it in items])
        rejected = rm.rewards([rm_conversation(it[lang][0], it[lang][2]) for it in items])
        acc = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(items)
        print(f"{lang}: {acc:.2f} on {len(items)} held-out pairs")
        assert acc >= 0.8
    rm.close()
