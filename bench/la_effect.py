"""Linear Alignment's effect on the embedded 0.5B model: script and length, with and without a principle.

The numbers the README quotes for Linear Alignment come from here (and ``tests/test_real_model.py``
asserts on the same measurement, through ``measure``): five prompts, greedy, 40 tokens, the
transformers engine in float32 with the server's default system prompt.

- "Always answer in Japanese.": the share of kana among the answers' non-space characters. Kana,
  not Han: Chinese is written in Han characters too, so counting them would score a Chinese answer
  as Japanese.
- "Answer in one short sentence.": the mean answer length in tokens.

Each principle runs at strength 0 (the principle as a system prompt, no contrast) and strength 3.

    python -m bench.la_effect            # CPU, ~2 min on 2 cores; writes bench/results/la_effect_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Provenance, device_label, model_path, write_results
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.config import EMBEDDED_MODEL
from service.engines.base import GenerationRequest, GenerationResult
from service.engines.transformers.engine import TransformersEngine

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEM = "You are a helpful assistant."
PROMPTS = (
    "What is the capital of France?",
    "Why is the sky blue?",
    "Give me a tip for learning to cook.",
    "What does a compiler do?",
    "How do I stay focused while studying?",
)
MAX_TOKENS = 40
STRENGTH = 3.0
JAPANESE = "Always answer in Japanese."
SHORT = "Answer in one short sentence."
JAPANESE_ANSWER = 0.2  # kana share from which an answer counts as Japanese (Japanese prose is mostly kana)


def is_kana(c: str) -> bool:
    """Hiragana or katakana (incl. the prolonged-sound mark): written by Japanese, not by Chinese."""
    return "\u3040" <= c <= "\u30ff" or "\u31f0" <= c <= "\u31ff" or "\uff66" <= c <= "\uff9d"


def kana_share(text: str) -> float:
    """Share of the non-space characters that are kana; 0 for an empty text."""
    chars = [c for c in text if not c.isspace()]
    return sum(is_kana(c) for c in chars) / max(1, len(chars))


@dataclass(frozen=True)
class Variant:
    name: str
    principle: str | None
    strength: float


VARIANTS = (
    Variant("base", None, 0.0),
    Variant("japanese_r0", JAPANESE, 0.0),
    Variant(f"japanese_r{STRENGTH:g}", JAPANESE, STRENGTH),
    Variant("short_r0", SHORT, 0.0),
    Variant(f"short_r{STRENGTH:g}", SHORT, STRENGTH),
)


def open_engine(model_dir: str, device: str = "cpu") -> TransformersEngine:
    return TransformersEngine(model_dir, device=device, dtype="float32", default_system=SYSTEM)


def run_variant(engine: TransformersEngine, v: Variant) -> list[GenerationResult]:
    la = LinearAlignmentConfig(v.principle, strength=v.strength) if v.principle else None
    reqs = [GenerationRequest(f"{v.name}-{i}", [{"role": "user", "content": p}], SamplingParams(max_tokens=MAX_TOKENS),
                              AlignmentSpec(la=la)) for i, p in enumerate(PROMPTS)]
    return engine.generate(reqs)


def summarise(v: Variant, results: list[GenerationResult], wall_s: float) -> dict[str, object]:
    shares = [kana_share(r.text) for r in results]
    return {"variant": v.name, "principle": v.principle, "strength": v.strength,
            "kana_share": round(sum(shares) / len(shares), 3),
            "japanese_answers": sum(s >= JAPANESE_ANSWER for s in shares),
            "mean_tokens": round(sum(r.completion_tokens for r in results) / len(results), 1),
            "wall_s": round(wall_s, 1),
            "answers": [{"prompt": p, "text": r.text, "tokens": r.completion_tokens, "kana_share": round(s, 3)}
                        for p, r, s in zip(PROMPTS, results, shares, strict=True)]}


def measure(engine: TransformersEngine) -> dict[str, dict[str, object]]:
    """Every variant on every prompt: {variant name: summary with the answers}."""
    out = {}
    for v in VARIANTS:
        t0 = time.perf_counter()
        results = run_variant(engine, v)
        out[v.name] = summarise(v, results, time.perf_counter() - t0)
        print(json.dumps({k: x for k, x in out[v.name].items() if k != "answers"}), file=sys.stderr, flush=True)
    return out


def markdown(rows: dict[str, dict[str, object]], device: str) -> str:
    lines = [f"# Linear Alignment's effect on the 0.5B model ({device})", "",
             f"Model `{EMBEDDED_MODEL}`, transformers engine, float32, greedy, {len(PROMPTS)} prompts "
             f"(`bench/la_effect.py`), max_tokens={MAX_TOKENS}, system prompt \"{SYSTEM}\". Kana share = share of "
             f"the answer's non-space characters that are hiragana/katakana (Han is not counted: Chinese uses it "
             f"too); an answer counts as Japanese from a kana share of {JAPANESE_ANSWER}. Strength 0 = the "
             f"principle as a system prompt only.", "",
             "| variant | principle | strength | mean kana share | Japanese answers | mean tokens |",
             "|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['variant']} | {r['principle'] or '—'} | {r['strength']:g} | {r['kana_share']} | "
                     f"{r['japanese_answers']}/{len(PROMPTS)} | {r['mean_tokens']} |")
    lines += ["", "First answer of each variant:", ""]
    for r in rows.values():
        first = r["answers"][0]  # type: ignore[index]
        lines.append(f"- {r['variant']}: {first['text']!r}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    args = ap.parse_args()
    engine = open_engine(model_path(EMBEDDED_MODEL), args.device)
    rows = measure(engine)
    prov = Provenance.collect(device_label(engine.device))
    payload = {"model": EMBEDDED_MODEL, "prompts": list(PROMPTS), "max_tokens": MAX_TOKENS, "system": SYSTEM,
               "japanese_answer_kana_share": JAPANESE_ANSWER, "variants": list(rows.values())}
    out = write_results(RESULTS, "la_effect", payload, markdown(rows, prov.device), prov)
    print(f"wrote {out}.json and {out}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
