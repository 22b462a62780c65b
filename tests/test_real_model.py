"""The embedded 0.5B model (slow tier; CI runs it): provisioning fidelity and LA in the intended direction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.la_effect import JAPANESE_ANSWER, STRENGTH, kana_share, measure, open_engine
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.engines.base import GenerationRequest
from service.engines.transformers.engine import TransformersEngine

STEER_STRENGTH = 4.0


def test_kana_share_tells_japanese_from_chinese() -> None:
    """Both scripts use Han characters; only Japanese writes kana."""
    japanese = "フランスの首都はパリです。"
    chinese = "法国的首都是巴黎。"
    assert kana_share(chinese) == 0.0
    assert kana_share("東京は日本の首都だ") >= JAPANESE_ANSWER > kana_share("东京是日本的首都")
    assert kana_share(japanese) == pytest.approx(10 / 13)
    assert kana_share("The capital of France is Paris.") == 0.0 and kana_share("   ") == 0.0


@pytest.fixture(scope="module")
def engine(real_model_dir: Path) -> TransformersEngine:
    return open_engine(str(real_model_dir))


@pytest.fixture(scope="module")
def la_effect(engine: TransformersEngine) -> dict[str, dict[str, object]]:
    """What bench/la_effect.py measures (and the README quotes), measured again here."""
    return measure(engine)


@pytest.mark.slow
def test_japanese_principle_switches_script(la_effect: dict[str, dict[str, object]]) -> None:
    base, la = la_effect["base"], la_effect[f"japanese_r{STRENGTH:g}"]
    print(f"kana share: base {base['kana_share']} -> LA {la['kana_share']}")
    assert base["kana_share"] < 0.05 and base["japanese_answers"] == 0
    assert la["kana_share"] > 0.4  # measured 0.555 (bench/results/la_effect_cpu.md)
    assert la["japanese_answers"] >= 4


@pytest.mark.slow
def test_short_principle_shortens_answers_beyond_strength_zero(la_effect: dict[str, dict[str, object]]) -> None:
    mean = [la_effect[name]["mean_tokens"] for name in ("base", "short_r0", f"short_r{STRENGTH:g}")]
    print(f"mean completion tokens: base {mean[0]}, r=0 {mean[1]}, r={STRENGTH:g} {mean[2]}")
    assert mean[2] < mean[1] < mean[0]  # measured 8.6 < 11.6 < 33.6 (bench/results/la_effect_cpu.md)


@pytest.mark.slow
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


@pytest.mark.slow
def test_activation_rm_profile_moves_scores_and_generations_toward_french(engine: TransformersEngine) -> None:
    """The 'french' profile compiled from 24 labelled examples, on the 40 pairs it was not compiled on
    ('test' + 'heldout'): patching its heads must score French answers above English ones and move
    every pair's score toward French relative to the plain judge; its steering must make more
    generated answers French than steering off. Measured on this model (CPU, float32): the ARM's
    French-English P(Yes) margin 0.025 (judge 0.014), French ahead on 35/40 pairs, the margin wider
    than the judge's on 39/40 (mean +0.012). The margins are small in P(Yes) — the 0.5B judge is
    nearly indifferent — but their sign is what the profile is for."""
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
    pairs = data["test"] + data["heldout"]
    n = len(pairs)
    readout = engine.open_readout([judge_conversation(q, fr, data["rubric"]) for q, fr, _ in pairs]
                                  + [judge_conversation(q, en, data["rubric"]) for q, _, en in pairs])
    p = readout.label_probability([[], compiled.scoring_steering()], YES_NO)
    readout.close()
    assert bool(((p >= 0) & (p <= 1)).all())
    gap = p[:, :n] - p[:, n:]  # [judge, ARM] x pairs: P(Yes | French) - P(Yes | English)
    judge_gap, arm_gap = gap[0], gap[1]
    shift = arm_gap - judge_gap
    print(f"heads {compiled.heads}; French-English P(Yes) margin on {n} pairs: judge {float(judge_gap.mean()):.3f}, "
          f"ARM {float(arm_gap.mean()):.3f}; French ahead (ARM) {float((arm_gap > 0).float().mean()):.2f}; "
          f"ARM wider than judge {float((shift > 0).float().mean()):.2f} (mean {float(shift.mean()):+.4f})")
    assert float(arm_gap.mean()) > 0.015
    assert float((arm_gap > 0).float().mean()) >= 0.75
    assert float(shift.mean()) > 0.005 and float((shift > 0).float().mean()) >= 0.85

    test = data["test"]
    detector = LanguageDetector()

    def french_share(strength: float) -> float:
        steering = tuple(compiled.generation_steering(strength))
        reqs = [GenerationRequest(f"{strength}-{i}", [{"role": "user", "content": q}], SamplingParams(max_tokens=30),
                                  AlignmentSpec(steering=steering)) for i, (q, _, _) in enumerate(test)]
        return sum(detector.detect(r.text) == "fr" for r in engine.generate(reqs)) / len(test)

    off, on = french_share(0.0), french_share(STEER_STRENGTH)
    print(f"French answers: steering off {off:.2f} -> strength {STEER_STRENGTH} {on:.2f}")
    assert on > off


@pytest.mark.slow
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
