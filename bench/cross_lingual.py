"""Cross-lingual reward transfer: do English-built scorers rank responses in other languages?

The same 36 held-out preference pairs (``bench/data/cross_lingual_pairs.json``) in English,
Japanese, Chinese and Korean are scored by
- ``reward_model``: the English reward model (``--reward-model``, default the shipped head),
- ``judge``: the served model as a zero-shot judge with the English default rubric,
- ``activation_rm``: an Activation RM compiled from English few-shot examples (the chosen and
  rejected responses of ``preference_pairs_train.json``, ``--shots`` of them, balanced).
Accuracy = share of pairs where the chosen response scores higher (ties count half), with a 95%
bootstrap interval; the figure of merit is the gap to English (Hong et al., 2024).

    python -m bench.cross_lingual                 # ~15 min on 2 CPU cores
    python -m bench.cross_lingual --shots 8       # quicker Activation RM
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

from service.config import EMBEDDED_MODEL, Settings, default_home
from service.engines.transformers.engine import TransformersEngine
from service.models.provision import resolve_model
from service.reward.activation_rm import CompileSettings, LabelledExample, compile_activation_rm
from service.reward.factory import resolve_reward_model
from service.reward.judge import DEFAULT_RUBRIC, YES_NO, judge_conversation
from service.reward.reward_model import TransformersRewardModel, rm_conversation

ROOT = Path(__file__).resolve().parents[1]
LANGS = ("en", "ja", "zh", "ko")


def bootstrap_ci(wins: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(wins)
    means = sorted(sum(rng.choice(wins) for _ in range(n)) / n for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def wins_of(chosen: list[float], rejected: list[float]) -> list[float]:
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]


def english_examples(shots: int, seed: int) -> list[LabelledExample]:
    rows = json.loads((ROOT / "bench" / "data" / "preference_pairs_train.json").read_text())["pairs"]
    rng = random.Random(seed)
    rng.shuffle(rows)
    out = []
    for k, (_, prompt, chosen, rejected) in enumerate(rows[:shots]):  # one side per pair, alternating
        out.append(LabelledExample(prompt, chosen, True) if k % 2 == 0 else LabelledExample(prompt, rejected, False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="generator/judge HF folder (default: the embedded 0.5B model)")
    ap.add_argument("--reward-model", default="embedded", help="as alignserve serve --reward-model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--shots", type=int, default=32, help="English labelled examples for the Activation RM")
    ap.add_argument("--num-heads", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    t_start = time.perf_counter()
    items = json.loads((ROOT / "bench" / "data" / "cross_lingual_pairs.json").read_text())["items"]
    settings = Settings(model=EMBEDDED_MODEL, reward_model=args.reward_model, home=default_home())
    resolved = resolve_reward_model(settings)
    if resolved is None:
        raise SystemExit("no reward model resolved; pass --reward-model embedded or a folder")
    rm = TransformersRewardModel(resolved[0], device=args.device, dtype=args.dtype, max_length=2048, name=resolved[1])
    device = (torch.cuda.get_device_name(0) if rm.device.type == "cuda"
              else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"{len(items)} pairs x {len(LANGS)} languages; device {device}; reward model {rm.name}", flush=True)

    scores: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    t = time.perf_counter()
    scores["reward_model"] = {}
    for lang in LANGS:
        ch = rm.rewards([rm_conversation(it[lang][0], it[lang][1]) for it in items])
        rj = rm.rewards([rm_conversation(it[lang][0], it[lang][2]) for it in items])
        scores["reward_model"][lang] = (ch, rj)
    rm_s = time.perf_counter() - t
    rm.close()
    print(f"  reward_model scored in {rm_s:.0f}s", flush=True)

    model = resolve_model(args.model or EMBEDDED_MODEL, default_home())
    engine = TransformersEngine(model, device=args.device, dtype=args.dtype, max_model_len=2048)
    examples = english_examples(args.shots, args.seed)
    t = time.perf_counter()

    def progress(phase: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"  activation_rm-{args.shots}: {phase} {done}/{total}", flush=True)

    shape = (engine.num_layers, engine.num_heads, engine.head_dim, engine.max_model_len)
    arm = compile_activation_rm(lambda call: call(engine), examples, DEFAULT_RUBRIC,
                                CompileSettings(num_heads=args.num_heads, seed=args.seed), shape, model, progress)
    compile_s = time.perf_counter() - t
    print(f"  compiled activation_rm-{args.shots} in {compile_s:.0f}s: heads {arm.heads}", flush=True)

    t = time.perf_counter()
    convs = [judge_conversation(it[lang][0], it[lang][k], DEFAULT_RUBRIC) for lang in LANGS for it in items
             for k in (1, 2)]
    readout = engine.open_readout(convs)
    p_yes = readout.label_probability([[], arm.scoring_steering()], YES_NO)
    readout.close()
    judge_s = time.perf_counter() - t
    n = len(items)
    for k, name in enumerate(("judge", f"activation_rm-{args.shots}")):
        scores[name] = {}
        for li, lang in enumerate(LANGS):
            block = p_yes[k, li * 2 * n:(li + 1) * 2 * n].tolist()
            scores[name][lang] = (block[0::2], block[1::2])

    rows = []
    for name, per_lang in scores.items():
        row: dict[str, object] = {"scorer": name}
        for lang in LANGS:
            w = wins_of(*per_lang[lang])
            lo, hi = bootstrap_ci(w, seed=args.seed)
            row[lang] = {"accuracy": round(sum(w) / len(w), 3), "ci95": [round(lo, 3), round(hi, 3)]}
        en = row["en"]["accuracy"]  # type: ignore[index]
        others = [row[lang]["accuracy"] for lang in LANGS[1:]]  # type: ignore[index]
        row["mean_gap_to_en"] = round(sum(others) / len(others) - en, 3)
        rows.append(row)
    categories = sorted({it["category"] for it in items})
    by_cat = {name: {c: round(sum(sum(wins_of([per[lang][0][i]], [per[lang][1][i]]))
                                  for lang in LANGS for i, it in enumerate(items) if it["category"] == c)
                              / (len(LANGS) * sum(it["category"] == c for it in items)), 3) for c in categories}
              for name, per in scores.items()}

    cmd = ("python -m bench.cross_lingual " + " ".join(sys.argv[1:])).strip()
    tag = "h100" if "H100" in device else engine.device.type
    result = {"device": device, "command": cmd, "pairs": n, "languages": list(LANGS), "rubric": DEFAULT_RUBRIC,
              "reward_model": resolved[1], "activation_rm_shots": args.shots, "activation_rm_heads": arm.heads,
              "seconds": {"reward_model": round(rm_s, 1), "activation_rm_compile": round(compile_s, 1),
                          "judge_and_activation_rm": round(judge_s, 1),
                          "total": round(time.perf_counter() - t_start, 1)},
              "rows": rows, "accuracy_by_category_all_languages": by_cat}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cross_lingual_{tag}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# Cross-lingual reward transfer ({device})", "",
             f"Command: `{cmd}` · {n} held-out pairs per language (same pairs, translated; "
             "`bench/data/cross_lingual_pairs.json`) · accuracy = share of pairs where the chosen response "
             "scores higher, [95% bootstrap interval] · gap = mean of ja/zh/ko minus en.", "",
             "| scorer | en | ja | zh | ko | gap to en |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[lang]['accuracy']:.2f} [{r[lang]['ci95'][0]:.2f}, {r[lang]['ci95'][1]:.2f}]"  # type: ignore[index]
                 for lang in LANGS]
        lines.append(f"| {r['scorer']} | " + " | ".join(cells) + f" | {float(r['mean_gap_to_en']):+.2f} |")  # type: ignore[arg-type]
    lines += ["", "Accuracy by category (all four languages pooled):", "",
              "| scorer | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
    for name, cats in by_cat.items():
        lines.append(f"| {name} | " + " | ".join(f"{cats[c]:.2f}" for c in categories) + " |")
    (args.out / f"cross_lingual_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
