"""Does a compiled Activation-RM profile move scores and generations in its direction?

Compiles the French-answer profile in ``bench/data/french_profile.json`` (12 questions answered in
French = good, in English = bad) with each head-selection objective and several seeds, plus a
control compiled with the labels flipped (English = good). On 40 held-out questions it reports
(a) how often each scorer ranks the French answer above the English one and the mean Yes/No-logit
gap French − English, with bootstrap 95% intervals over questions, and (b) the share of generated
answers detected as French (offline language ID) at several steering strengths, 0 = off.

    python -m bench.arm_steering --device cpu     # ~30 min on 2 CPU cores
    python -m bench.arm_steering --seeds 0 --objectives ranking --strengths 0 4   # quick look

Writes bench/results/arm_steering_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.harness import Provenance, add_engine_args, bootstrap_ci, device_label, transformers_engine, write_results
from service.alignment.head_selection import yes_logit
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.engines.base import GenerationRequest
from service.language.fidelity import LanguageDetector
from service.reward.activation_rm import (
    OBJECTIVES,
    CompiledARM,
    CompileSettings,
    LabelledExample,
    compile_activation_rm,
)
from service.reward.judge import YES_NO, judge_conversation

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "french_profile.json"


def load_profile() -> tuple[str, list[LabelledExample], list[list[str]]]:
    d = json.loads(DATA.read_text())
    train = [LabelledExample(q, fr, True) for q, fr, _ in d["train"]]
    train += [LabelledExample(q, en, False) for q, _, en in d["train"]]
    return d["rubric"], train, d["test"] + d.get("heldout", [])


def summarise(p: torch.Tensor, n: int) -> dict[str, object]:
    """Pairs are (French i, English i): accuracy, logit gap and mean P(Yes) with intervals."""
    wins = [float(p[i] > p[n + i]) for i in range(n)]
    z = yes_logit(p)
    gaps = [float(z[i] - z[n + i]) for i in range(n)]
    return {"accuracy": sum(wins) / n, "accuracy_ci": bootstrap_ci(wins), "logit_gap": sum(gaps) / n,
            "logit_gap_ci": bootstrap_ci(gaps), "mean_p_yes_french": float(p[:n].mean()),
            "mean_p_yes_english": float(p[n:].mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(ap)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0, 2, 4, 8, 12],
                    help="generation steering strengths in sigma, 0 = off (default %(default)s)")
    ap.add_argument("--num-heads", type=int, default=16, help="heads per profile (default %(default)s)")
    ap.add_argument("--iterations", type=int, default=CompileSettings.iterations,
                    help="REINFORCE iterations of the head selection (default %(default)s)")
    ap.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES),
                    help="head-selection objectives, one profile per objective and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="compile seeds (default %(default)s)")
    ap.add_argument("--no-flipped", action="store_true", help="skip the flipped-label control")
    ap.add_argument("--max-tokens", type=int, default=40, help="tokens per generated answer (default %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    args = ap.parse_args(argv)

    engine = transformers_engine(args.model, device=args.device, dtype=args.dtype, max_model_len=2048)
    model = engine.model_name
    device = device_label(engine.device)
    rubric, train, test = load_profile()
    shape = (engine.num_layers, engine.num_heads, engine.head_dim, engine.max_model_len)
    flipped = [LabelledExample(e.prompt, e.response, not e.good) for e in train]

    profiles: dict[str, CompiledARM] = {}
    variants = [(f"activation_rm {o} seed {s}", o, s, train) for o in args.objectives for s in args.seeds]
    if not args.no_flipped:
        variants += [(f"control: flipped labels, {o} seed {args.seeds[0]}", o, args.seeds[0], flipped)
                     for o in args.objectives]
    for name, objective, seed, examples in variants:
        t0 = time.perf_counter()
        profiles[name] = compile_activation_rm(
            lambda call: call(engine), examples, rubric,
            CompileSettings(num_heads=args.num_heads, iterations=args.iterations, objective=objective, seed=seed),
            shape, model)
        print(f"{name}: {len(profiles[name].heads)} heads in {time.perf_counter() - t0:.0f}s "
              f"(in-sample pair accuracy {profiles[name].info['zero_shot_pair_accuracy']:.2f} -> "
              f"{profiles[name].info['patched_pair_accuracy']:.2f})", flush=True)

    n = len(test)
    convs = [judge_conversation(q, fr, rubric) for q, fr, _ in test] + [judge_conversation(q, en, rubric)
                                                                        for q, _, en in test]
    readout = engine.open_readout(convs)
    p = readout.label_probability([[]] + [c.scoring_steering() for c in profiles.values()], YES_NO)
    readout.close()
    scoring = {"judge": summarise(p[0], n)}
    for k, (name, c) in enumerate(profiles.items()):
        scoring[name] = {**summarise(p[k + 1], n), "heads": len(c.heads), "compile_s": c.info["compile_s"],
                         "train_pair_accuracy": c.info["patched_pair_accuracy"]}
    for name, v in scoring.items():
        print(f"{name}: French > English {v['accuracy']:.2f}, logit gap {v['logit_gap']:+.3f}", flush=True)

    compiled = profiles[variants[0][0]]  # the steering directions do not depend on the objective
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

    prov = Provenance.collect(device)
    cmd = prov.command
    result = {"rubric": rubric, "train_examples": len(train), "test_pairs": n,
              "iterations": args.iterations, "steer_heads": compiled.steering_heads,
              "profiles": {k: {"heads": c.heads, "info": c.info} for k, c in profiles.items()},
              "scoring": scoring, "generation": generation}

    def ci(v: Any, fmt: str = ".2f") -> str:
        lo, hi = v
        return f"[{lo:{fmt}}, {hi:{fmt}}]"

    lines = [f"# Activation-RM profile 'answers in French': scoring and steering ({device})", "",
             f"Command: `{cmd}` · {len(train)} labelled examples (12 questions, French = good) · {n} held-out "
             f"question pairs · {args.iterations} REINFORCE iterations · rubric: \"{rubric}\"", "",
             "| scorer | French > English | 95% CI | logit gap Fr − En | 95% CI | P(Yes) Fr | P(Yes) En | heads |"
             " in-sample pair acc. | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for scorer, v in scoring.items():
        lines.append(f"| {scorer} | {v['accuracy']:.2f} | {ci(v['accuracy_ci'])} | {v['logit_gap']:+.3f} | "
                     f"{ci(v['logit_gap_ci'], '+.3f')} | "
                     f"{v['mean_p_yes_french']:.3f} | {v['mean_p_yes_english']:.3f} | {v.get('heads', '–')} | "
                     f"{v.get('train_pair_accuracy', float('nan')):.2f} | {v.get('compile_s', '–')} |")
    lines += ["", f"Steering with `{variants[0][0]}` ({len(compiled.steering_heads)} heads):", "",
              "| steering strength (σ) | answers in French | first answer |", "|---|---|---|"]
    for g in generation:
        first = str(g["samples"][0]).replace("\n", " ").replace("|", "/")[:80]  # type: ignore[index]
        lines.append(f"| {g['strength']:g} | {g['french_share']:.2f} | {first} |")
    write_results(args.out, "arm_steering", result, "\n".join(lines) + "\n", prov)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
