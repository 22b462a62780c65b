"""Language fidelity of the served model with and without the `enforce_language` option.

    python -m bench.language_fidelity [--max-tokens 48] [--strength 3]

Greedy answers to bench/data/multilingual_prompts.json (written for this benchmark) with no
profile, with the language principle as a prompt only (LA strength 0) and with `enforce_language`
at --strength; fidelity = share of answers detected in the prompt's language. Writes
bench/results/language_fidelity_<device>.json/.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.harness import Provenance, device_label, transformers_engine, write_results
from service.alignment.sampling import SamplingParams
from service.api.schemas import LASettings, ProfileSpec
from service.config import EMBEDDED_MODEL, Settings
from service.domain.planning import alignment_for
from service.engines.base import GenerationRequest
from service.language.fidelity import LanguageDetector

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED_MODEL, help="HF folder or embedded:NAME (default %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens per answer (default %(default)s)")
    ap.add_argument("--strength", type=float, default=3.0, help="LA strength of enforce_language (default %(default)s)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    args = ap.parse_args(argv)
    prompts = json.loads((HERE / "data" / "multilingual_prompts.json").read_text())
    settings = Settings(model=args.model)
    engine = transformers_engine(settings.model, home=settings.home, default_system=settings.default_system_prompt)
    det = LanguageDetector()
    variants = {
        "base": None,
        "principle_prompt_r0": ProfileSpec(enforce_language=True, la=LASettings(strength=0.0)),
        f"enforce_language_r{args.strength:g}": ProfileSpec(enforce_language=True,
                                                            la=LASettings(strength=args.strength)),
    }
    rows, samples = [], {}
    for name, spec in variants.items():
        reqs = []
        for i, p in enumerate(prompts):
            align = alignment_for(spec, det.detect(p["prompt"])) if spec else alignment_for(None)
            reqs.append(GenerationRequest(f"{name}-{i}", [{"role": "user", "content": p["prompt"]}],
                                          SamplingParams(max_tokens=args.max_tokens), align))
        t0 = time.perf_counter()
        results = engine.generate(reqs)
        wall = time.perf_counter() - t0
        checks = [det.compare(p["prompt"], r.text) for p, r in zip(prompts, results, strict=True)]
        by_lang: dict[str, list[bool]] = {}
        for p, c in zip(prompts, checks, strict=True):
            by_lang.setdefault(p["lang"], []).append(c.match)
        rows.append({"variant": name, "fidelity": round(sum(c.match for c in checks) / len(checks), 3),
                     **{f"fidelity_{k}": round(sum(v) / len(v), 3) for k, v in sorted(by_lang.items())},
                     "mean_tokens": round(sum(r.completion_tokens for r in results) / len(results), 1),
                     "wall_s": round(wall, 1)})
        samples[name] = [{"prompt": p["prompt"], "answer": r.text, "detected": c.answer, "match": c.match}
                         for p, r, c in zip(prompts, results, checks, strict=True)]
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    device = device_label(engine.device)
    prov = Provenance.collect(device)
    langs = sorted({p["lang"] for p in prompts})
    lines = [f"# Language fidelity ({device}, {len(prompts)} prompts in {', '.join(langs)})", "",
             f"Model `{args.model}`, greedy, max_tokens={args.max_tokens}. Fidelity = share of answers detected in "
             f"the prompt's language (langid + CJK script rules). Reproduce: `{prov.command}`.", "",
             "| variant | all | " + " | ".join(langs) + " | mean tokens |",
             "|---|---|" + "---|" * len(langs) + "---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['fidelity']} | " + " | ".join(str(r[f'fidelity_{k}']) for k in langs)
                     + f" | {r['mean_tokens']} |")
    write_results(args.out, "language_fidelity", {"model": args.model, "rows": rows, "samples": samples},
                  "\n".join(lines) + "\n", prov)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
