"""Does a compiled Activation-RM profile move scores and generations in its direction?

Compiles the French-answer profile in ``bench/data/french_profile.json`` (12 questions answered in
French = good, in English = bad), then on 6 held-out questions reports (a) how often the judge and
the Activation RM score the French answer above the English one, and (b) the share of generated
answers detected as French (offline language ID) at several steering strengths, 0 = off.

    python bench/arm_steering.py --device cpu     # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.config import EMBEDDED_MODEL, default_home
from service.engines.base import GenerationRequest
from service.engines.transformers_engine import TransformersEngine
from service.language.fidelity import LanguageDetector
from service.models.provision import resolve_model
from service.reward.activation_rm import CompileSettings, LabelledExample, compile_activation_rm
from service.reward.judge import judge_conversation

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "french_profile.json"


def load_profile() -> tuple[str, list[LabelledExample], list[list[str]]]:
    d = json.loads(DATA.read_text())
    train = [LabelledExample(q, fr, True) for q, fr, _ in d["train"]]
    train += [LabelledExample(q, en, False) for q, _, en in d["train"]]
    return d["rubric"], train, d["test"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF model folder (default: the embedded 0.5B model)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0, 2, 4, 8, 12])
    ap.add_argument("--num-heads", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    model = resolve_model(args.model or EMBEDDED_MODEL, default_home())
    engine = TransformersEngine(model, device=args.device, dtype=args.dtype, max_model_len=2048)
    cpu = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name(0) if engine.device.type == "cuda" else cpu
    rubric, train, test = load_profile()
    t0 = time.perf_counter()
    compiled = compile_activation_rm(
        lambda call: call(engine), train, rubric, CompileSettings(num_heads=args.num_heads, iterations=args.iterations),
        (engine.num_layers, engine.num_heads, engine.head_dim, engine.max_model_len), model,
        lambda phase, done, total: print(f"  {phase} {done}/{total}", flush=True) if done % 10 == 0 else None)
    compile_s = time.perf_counter() - t0
    print(f"compiled in {compile_s:.0f}s: {len(compiled.heads)} heads {compiled.heads}", flush=True)

    convs = [judge_conversation(q, fr, rubric) for q, fr, _ in test] + [judge_conversation(q, en, rubric)
                                                                        for q, _, en in test]
    readout = engine.open_readout(convs)
    p = readout.yes_probability([[], compiled.scoring_steering()])
    readout.close()
    n = len(test)
    scoring = {name: {"accuracy": float((p[k, :n] > p[k, n:]).float().mean()),
                      "mean_p_yes_french": float(p[k, :n].mean()), "mean_p_yes_english": float(p[k, n:].mean())}
               for k, name in enumerate(("judge", "activation_rm"))}

    detector = LanguageDetector()
    generation = []
    for strength in args.strengths:
        steering = tuple(compiled.generation_steering(strength))
        reqs = [GenerationRequest(f"s{strength}-{i}", [{"role": "user", "content": q}],
                                  SamplingParams(max_tokens=args.max_tokens), AlignmentSpec(steering=steering))
                for i, (q, _, _) in enumerate(test)]
        outs = engine.generate(reqs)
        langs = [detector.detect(o.text) for o in outs]
        generation.append({"strength": strength, "french_share": sum(lang == "fr" for lang in langs) / n,
                           "languages": langs, "samples": [o.text for o in outs[:3]]})
        print(f"strength {strength}: French {generation[-1]['french_share']:.2f} {langs} | {outs[0].text!r}",
              flush=True)

    cmd = ("python bench/arm_steering.py " + " ".join(sys.argv[1:])).strip()
    tag = "h100" if "H100" in device else engine.device.type
    result = {"device": device, "command": cmd, "rubric": rubric, "train_examples": len(train),
              "heads": compiled.heads,
              "steer_heads": compiled.steering_heads, "compile": compiled.info, "scoring": scoring,
              "generation": generation}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"arm_steering_{tag}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    lines = [f"# Activation-RM profile 'answers in French': scoring and steering ({device})", "",
             f"Command: `{cmd}` · {len(train)} labelled examples · {len(compiled.heads)} scoring heads, "
             f"{len(compiled.steering_heads)} steering heads · "
             f"compiled in {compile_s:.0f}s", "",
             "| scorer | French > English (6 held-out pairs) | mean P(Yes) French | mean P(Yes) English |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {v['accuracy']:.2f} | {v['mean_p_yes_french']:.3f} | {v['mean_p_yes_english']:.3f} |"
              for k, v in scoring.items()]
    lines += ["", "| steering strength (σ) | answers in French | first answer |", "|---|---|---|"]
    for g in generation:
        first = str(g["samples"][0]).replace("\n", " ").replace("|", "/")[:80]  # type: ignore[index]
        lines.append(f"| {g['strength']:g} | {g['french_share']:.2f} | {first} |")
    (args.out / f"arm_steering_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
