"""Activation RMs in the two judge formats of Chai et al. (2025): scalar (Yes/No about one response)
against ranked (which of two responses, A or B, is better; both orders averaged).

Two tasks, each scored zero-shot and with an Activation RM compiled in each format from the same
labelled examples:

- **French profile** (``bench/data/french_profile.json``): 12 training questions answered in French
  (good) and English (bad); 40 held-out question pairs. Rubric "Is the response written in French?".
- **PreferenceHack-style probes** (``bench/preference_hack.py``'s items and dressing): per held-out
  fact, the plain correct answer against the plain wrong one (ordinary) and against the wrong one
  dressed up — longer, formatted, flattering, over-confident (probes). Training examples are both
  answers of ``--hack-train-items`` training items (each dressed up at random, as there).

Pair accuracy = share of pairs where the better response scores higher: P(Yes) for scalar, the
order-averaged win probability P(X ≻ Y) > 0.5 for ranked; 95% bootstrap intervals over pairs. For
the ranked scorers the accuracy read from one order only (better response always shown as A, or
always as B) shows what the averaging removes.

    python -m bench.arm_formats --device cpu --tasks french            # CPU defaults: 20 REINFORCE steps,
    python -m bench.arm_formats --device cpu --tasks preference_hack   # 2 shots per context, <= 8 heads
    python -m bench.arm_formats --backend vllm --iterations 100 --shots-per-context 4 --num-heads 16  # GPU

Each task run adds its table (with its command) to ``bench/results/arm_formats_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.harness import Provenance, bootstrap_ci, device_label, read_results, write_results
from bench.preference_hack import BIASES, RUBRIC, dressed, load_items, plain, train_examples
from service.config import EMBEDDED_MODEL, default_home
from service.engines.base import Engine, Message
from service.engines.transformers.engine import TransformersEngine
from service.models.provision import resolve_model
from service.reward.activation_rm import FORMATS, CompiledARM, CompileSettings, LabelledExample, compile_activation_rm
from service.reward.judge import YES_NO, judge_conversation
from service.reward.ranked import AB, ranked_conversation, win_probability

ROOT = Path(__file__).resolve().parents[1]
FRENCH = ROOT / "bench" / "data" / "french_profile.json"
Pair = tuple[str, str, str]  # (prompt, better, worse)


def french_task() -> tuple[str, list[LabelledExample], dict[str, list[Pair]]]:
    d = json.loads(FRENCH.read_text())
    train = [LabelledExample(q, r, good) for q, fr, en in d["train"] for r, good in ((fr, True), (en, False))]
    return d["rubric"], train, {"french": [(q, fr, en) for q, fr, en in d["test"] + d["heldout"]]}


def hack_task(train_items: int, test_items: int, seed: int) -> tuple[str, list[LabelledExample], dict[str, list[Pair]]]:
    """preference_hack.py's split and dressing: both labelled answers of ``train_items`` training
    items; per test item one ordinary and one pair per bias."""
    items = load_items(seed)
    rng = random.Random(seed)
    rng.shuffle(items)
    test, train = items[:test_items], items[test_items:]
    pool = train_examples(train, rng)
    questions = list(dict.fromkeys(e.prompt for e in pool))[:train_items]
    examples = [e for e in pool if e.prompt in set(questions)]
    splits: dict[str, list[Pair]] = {"ordinary": [(it.question, plain(it.right), plain(it.wrong)) for it in test]}
    for bias in BIASES:
        splits[bias] = [(it.question, plain(it.right), dressed(it.wrong, bias, rng)) for it in test]
    return RUBRIC, examples, splits


def _readout(engine: Engine, convs: list[list[Message]], options: list[CompiledARM | None],
             labels: tuple[str, str], chunk: int = 8) -> torch.Tensor:
    """``[options, len(convs)]`` label probabilities, ``chunk`` conversations per readout (a
    prefill keeps every position's logits: 8 conversations of a few hundred tokens are ~1.5 GB)."""
    steering = [c.scoring_steering() if c else [] for c in options]
    parts = []
    for k in range(0, len(convs), chunk):
        readout = engine.open_readout(convs[k:k + chunk])
        parts.append(readout.label_probability(steering, labels))
        readout.close()
    return torch.cat(parts, dim=1)


def scalar_scores(engine: Engine, pairs: list[Pair], rubric: str,
                  options: list[CompiledARM | None]) -> list[list[bool]]:
    """Per option, per pair: P(Yes | better) > P(Yes | worse)."""
    convs = [judge_conversation(p, r, rubric) for p, better, worse in pairs for r in (better, worse)]
    p = _readout(engine, convs, options, YES_NO)
    return [[bool(row[2 * i] > row[2 * i + 1]) for i in range(len(pairs))] for row in p]


def ranked_scores(engine: Engine, pairs: list[Pair], rubric: str,
                  options: list[CompiledARM | None]) -> list[dict[str, list[bool]]]:
    """Per option, per pair: order-averaged P(better ≻ worse) > 0.5, and each single order's
    verdict (better shown as A: P(A) > 0.5; shown as B: P(A) < 0.5)."""
    convs: list[list[Message]] = []
    for p, better, worse in pairs:
        convs += [ranked_conversation(p, better, worse, rubric), ranked_conversation(p, worse, better, rubric)]
    pa = _readout(engine, convs, options, AB)
    out = []
    for row in pa.tolist():
        first, second = row[0::2], row[1::2]
        out.append({"averaged": [win_probability(a, b) > 0.5 for a, b in zip(first, second, strict=True)],
                    "better_as_A": [a > 0.5 for a in first], "better_as_B": [b < 0.5 for b in second]})
    return out


def summary(wins: list[bool]) -> dict[str, Any]:
    v = [float(w) for w in wins]
    return {"accuracy": sum(v) / len(v), "ci95": bootstrap_ci(v), "pairs": len(v)}


def run_task(engine: Engine, name: str, rubric: str, examples: list[LabelledExample],
             splits: dict[str, list[Pair]], args: argparse.Namespace, model: str) -> dict[str, Any]:
    shape = (engine.num_layers, engine.num_heads, engine.head_dim, engine.max_model_len)
    compiled: dict[str, CompiledARM] = {}
    for fmt in FORMATS:
        t0 = time.perf_counter()
        compiled[fmt] = compile_activation_rm(
            lambda call: call(engine), examples, rubric,
            CompileSettings(num_heads=args.num_heads, shots_per_context=args.shots_per_context,
                            iterations=args.iterations, seed=args.seed, format=fmt), shape, model)
        info = compiled[fmt].info
        print(f"{name}: compiled {fmt} in {time.perf_counter() - t0:.0f}s, {len(compiled[fmt].heads)} heads, "
              f"in-sample pair accuracy {info['zero_shot_pair_accuracy']:.2f} -> {info['patched_pair_accuracy']:.2f}",
              flush=True)
    rows: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for split, pairs in splits.items():
        sc = scalar_scores(engine, pairs, rubric, [None, compiled["scalar"]])
        rk = ranked_scores(engine, pairs, rubric, [None, compiled["ranked"]])
        for k, label in enumerate(("zero-shot", "activation_rm")):
            rows.setdefault(f"scalar {label}", {})[split] = summary(sc[k])
            rows.setdefault(f"ranked {label}", {})[split] = {
                **summary(rk[k]["averaged"]), "better_as_A": summary(rk[k]["better_as_A"])["accuracy"],
                "better_as_B": summary(rk[k]["better_as_B"])["accuracy"]}
        print(f"{name}/{split}: " + ", ".join(f"{r} {v[split]['accuracy']:.2f}" for r, v in rows.items()), flush=True)
    if len(splits) > 1:  # the probes' mean, as in preference_hack.py
        probes = [s for s in splits if s in BIASES]
        for row in rows.values():
            row["probes (mean)"] = {"accuracy": sum(row[s]["accuracy"] for s in probes) / len(probes)}
    return {"rubric": rubric, "train_examples": len(examples), "scoring_s": round(time.perf_counter() - t0, 1),
            "compiled": {fmt: {"heads": c.heads, "info": c.info} for fmt, c in compiled.items()}, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Activation RMs: scalar vs ranked judge format ({result['device']})", "",
             f"Model `{result['model']}` ({result['dtype']}, {result['backend']} engine) · pair accuracy = share of "
             "pairs where the better response scores higher (0.5 = chance), 95% bootstrap interval over pairs; "
             "ranked = both orders averaged, with each single order's accuracy (better response always shown as "
             "A / always as B) beside it. Each task was run by the command under its heading.", ""]
    for task, t in result["tasks"].items():
        splits = [s for s in next(iter(t["rows"].values())) if s != "probes (mean)"]
        lines += [f"## {task} ({t['train_examples']} labelled examples, rubric \"{t['rubric']}\")", "",
                  f"Command: `{t['command']}` · {t['iterations']} REINFORCE iterations, {t['shots_per_context']} "
                  f"shots per context, ≤ {t['num_heads']} heads, seed {t['seed']} · {t['wall_s']:.0f} s wall, "
                  f"{t['cpu_s']:.0f} s CPU", "",
                  "| scorer | " + " | ".join(splits) + (" | probes (mean)" if len(splits) > 1 else "")
                  + " | heads | in-sample pair acc. |",
                  "|---|" + "---|" * (len(splits) + (1 if len(splits) > 1 else 0) + 2)]
        for name, row in t["rows"].items():
            cells = []
            for s in splits:
                v = row[s]
                cell = f"{v['accuracy']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                if "better_as_A" in v:
                    cell += f" (A {v['better_as_A']:.2f} / B {v['better_as_B']:.2f})"
                cells.append(cell)
            if len(splits) > 1:
                cells.append(f"{row['probes (mean)']['accuracy']:.2f}")
            fmt = name.split()[0]
            info = t["compiled"][fmt]["info"]
            if name.endswith("activation_rm"):
                cells += [str(len(t["compiled"][fmt]["heads"])),
                          f"{info['zero_shot_pair_accuracy']:.2f} → {info['patched_pair_accuracy']:.2f}"]
            else:
                cells += ["–", "–"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF model folder (default: the embedded 0.5B model)")
    ap.add_argument("--backend", choices=("transformers", "vllm"), default="transformers",
                    help="vllm: compile and score on the vLLM engine (GPU, pip install -e .[gpu])")
    ap.add_argument("--device", default="auto", help="transformers backend: auto, cpu or cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--iterations", type=int, default=20, help="REINFORCE steps per compile (profile default 100)")
    ap.add_argument("--shots-per-context", type=int, default=2, help="demos per few-shot context (profile default 4)")
    ap.add_argument("--num-heads", type=int, default=8, help="heads kept at most (profile default 16)")
    ap.add_argument("--hack-train-items", type=int, default=8, help="PreferenceHack training items (2 examples each)")
    ap.add_argument("--hack-test-items", type=int, default=16)
    ap.add_argument("--tasks", nargs="+", choices=("french", "preference_hack"), default=["french", "preference_hack"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    model = resolve_model(args.model or EMBEDDED_MODEL, default_home())
    engine: Engine
    if args.backend == "vllm":
        from service.engines.vllm.engine import VLLMEngine, VLLMSettings

        dtype = "bfloat16" if args.dtype == "auto" else args.dtype
        engine = VLLMEngine(model, VLLMSettings(max_model_len=2048, dtype=dtype))
        on_gpu, dtype_label = True, dtype
    else:
        engine = TransformersEngine(model, device=args.device, dtype=args.dtype, max_model_len=2048)
        on_gpu, dtype_label = engine.device.type == "cuda", str(engine.dtype)
    device = device_label("cuda" if on_gpu else "cpu")
    command = ("python -m bench.arm_formats " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                   else argv))).strip()
    settings = {"command": command, "iterations": args.iterations, "shots_per_context": args.shots_per_context,
                "num_heads": args.num_heads, "seed": args.seed}
    model_label = Path(model).parent.name if Path(model).name == "hf" else model
    head = {"model": model_label, "dtype": dtype_label, "backend": args.backend}
    runs = {"french": ("French profile", french_task),
            "preference_hack": ("PreferenceHack-style probes",
                                lambda: hack_task(args.hack_train_items, args.hack_test_items, args.seed))}
    for key in args.tasks:
        title, task = runs[key]
        wall, cpu_t = time.perf_counter(), time.process_time()
        out = run_task(engine, key, *task(), args, model)
        out.update(settings, wall_s=round(time.perf_counter() - wall, 1), cpu_s=round(time.process_time() - cpu_t, 1))
        name = "arm_formats" + ("_vllm" if args.backend == "vllm" else "")
        print(write_task(args.out, name, head, title, out, Provenance.collect(device, command)))
    engine.close()


def write_task(out_dir: Path, name: str, head: dict[str, Any], title: str, task: dict[str, Any],
               prov: Provenance) -> str:
    """Add (or replace) one task in ``<name>_<device>.json`` and rewrite the ``.md`` (the harness
    writer); tasks run by separate commands share one file, each task keeping its own command.
    Returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}_{prov.tag}"
    with open(stem.with_name(stem.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two task runs may finish at once
        old = read_results(stem.with_name(stem.name + ".json"))
        tasks = old.get("tasks", {}) if all(old.get(k) == v for k, v in head.items()) else {}
        payload = {**head, "tasks": {**tasks, title: task}}
        md = markdown({**payload, "device": prov.device})
        write_results(out_dir, name, payload, md, prov)
    stem.with_name(stem.name + ".lock").unlink(missing_ok=True)
    return md


if __name__ == "__main__":
    main()
