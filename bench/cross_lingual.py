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

``--replicate`` runs the seed paper's actual comparison instead (Hong et al., *Cross-lingual
Transfer of Reward Models*): Bradley-Terry heads trained with one recipe (``bench/train_reward_head.py``:
same features, same pairs translated, same augmentation, same penalty grid and CV folds) on English
and on each target language of ``bench/data/preference_pairs_multilingual.json`` (152 train pairs),
then the English RM versus the target-language RM on the same held-out target-language pairs (72),
with bootstrap intervals and the paired difference, plus a representation-shift analysis
(head-direction cosines, features of translated pairs). Writes ``cross_lingual_replication_<device>``.

    python -m bench.cross_lingual --replicate --relevance-pairs off
        # 1,792 conversations to featurise the first time (about 24 min of CPU, measured on a shared
        # 2-core machine; cached per language under ~/.cache/alignserve), seconds afterwards;
        # the default --relevance-pairs on adds the shipped recipe's 608 relevance conversations
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench.train_reward_head import (
    LAMBDAS,
    MULTILINGUAL,
    BTHead,
    FeatureCache,
    device_name,
    feature_runner,
    load_multilingual,
    train_head,
    with_relevance,
)
from service.config import EMBEDDED_MODEL, Settings, default_home
from service.engines.transformers.engine import TransformersEngine
from service.models.provision import resolve_model
from service.reward.activation_rm import CompileSettings, LabelledExample, compile_activation_rm
from service.reward.embedded_rm import SHIPPED_HEAD
from service.reward.factory import resolve_reward_model
from service.reward.judge import DEFAULT_RUBRIC, YES_NO, judge_conversation
from service.reward.reward_model import TransformersRewardModel, rm_conversation

ROOT = Path(__file__).resolve().parents[1]
LANGS = ("en", "ja", "zh", "ko")


# ---- statistics: these move to bench/harness.py (the shared bench harness) once it is in main ----------

def bootstrap_ci(wins: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``wins`` (items resampled with replacement)."""
    rng = random.Random(seed)
    n = len(wins)
    means = sorted(sum(rng.choice(wins) for _ in range(n)) / n for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], rounds: int = 2000,
                          seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) over paired items, with a 95% percentile interval from resampling the *items*
    (both scores of an item stay together, so what they share cancels: narrower than two separate CIs)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired samples must be non-empty and of equal length")
    rng = random.Random(seed)
    n = len(a)
    d = [x - y for x, y in zip(a, b, strict=True)]
    means = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return sum(d) / n, means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def write_results(out: Path, stem: str, result: dict[str, object], lines: list[str]) -> None:
    """``<stem>.json`` and ``<stem>.md`` under ``out`` (the result names its device and command)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


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


# ---- the seed paper's comparison: English RM vs target-language RMs, one recipe ---------------------------

TARGETS = LANGS[1:]


def margin_wins(margins: torch.Tensor) -> list[float]:
    """Per pair: 1 if the chosen response scores higher, 0.5 on a tie, 0 otherwise."""
    return [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins.tolist()]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def matched_vs_mismatched(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of row i of ``x`` with row i of ``y`` (the same item in two languages), and with
    the other rows of ``y`` (different items): how much of a vector survives translation."""
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    yn = y / y.norm(dim=1, keepdim=True).clamp_min(1e-300)
    sims = xn @ yn.T
    n = sims.shape[0]
    matched = float(sims.diagonal().mean())
    mismatched = float((sims.sum() - sims.diagonal().sum()) / (n * n - n))
    return matched, mismatched


def interval(wins: list[float], seed: int) -> dict[str, object]:
    lo, hi = bootstrap_ci(wins, seed=seed)
    return {"accuracy": round(sum(wins) / len(wins), 3), "ci95": [round(lo, 3), round(hi, 3)]}


def paired(a: list[float], b: list[float], seed: int) -> dict[str, object]:
    d, lo, hi = paired_bootstrap_diff(a, b, seed=seed)
    return {"difference": round(d, 3), "ci95": [round(lo, 3), round(hi, 3)]}


def verdict(mean_diff: dict[str, object]) -> str:
    """Plain statement of how our mean (English RM - target RM) compares with the seed's +3-4 points."""
    d = float(mean_diff["difference"])  # type: ignore[arg-type]
    lo, hi = (float(v) for v in mean_diff["ci95"])  # type: ignore[attr-defined]
    seed_in = lo <= 0.04 and hi >= 0.03  # any overlap with the seed's range
    if lo > 0:
        sign = "the English RM is better, as in the seed"
    elif hi < 0:
        sign = "the target-language RMs are better, the opposite of the seed"
    else:
        sign = "no difference we can detect (the interval contains 0)"
    if seed_in:
        reading = ("overlaps our interval, so our result is consistent with the seed's figure"
                   + (" but, at this size, equally with no difference" if lo <= 0 else ""))
    else:
        reading = "lies outside our interval, so our result does not reproduce the seed's figure"
    return (f"mean English-RM minus target-RM accuracy {d:+.3f} [95% CI {lo:+.3f}, {hi:+.3f}]: {sign}; the seed's "
            f"+0.03 to +0.04 {reading}.")


def replicate(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    targets = tuple(args.targets.split(","))
    if not targets or not set(targets) <= set(TARGETS):
        raise SystemExit(f"--targets: a comma-separated subset of {','.join(TARGETS)}")
    langs = ("en", *targets)
    augment = args.relevance_pairs == "on"
    rows = {lang: ((with_relevance if augment else list)(load_multilingual(lang, "train")),
                   load_multilingual(lang, "test")) for lang in langs}
    n_train, n_test = len(load_multilingual("en", "train")), len(rows["en"][1])
    groups = [str(i % n_train) for i in range(len(rows["en"][0]))]  # pair i + its relevance pair: one CV group
    feats: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    cache_s: dict[str, dict[str, float]] = {}
    with feature_runner(args.device, args.dtype) as rm:
        device = device_name(rm)
        print(f"{n_train} train pairs (+{n_train if augment else 0} relevance) and {n_test} test pairs x "
              f"{len(langs)} languages; "
              f"device {device}", flush=True)
        for lang in langs:
            t = time.perf_counter()
            cache = FeatureCache(rm, args.dtype, lang)
            feats[lang] = (*cache.pair_features(rows[lang][0]), *cache.pair_features(rows[lang][1]))
            cache_s[lang] = {"this_run_s": round(time.perf_counter() - t, 1), "computed_this_run": cache.computed,
                             "cache_fill_model_s": round(cache.seconds, 1)}
            print(f"  {lang}: features ready ({cache.computed} computed now, {time.perf_counter() - t:.0f}s)",
                  flush=True)
    t_fit = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fits are many tiny ops: on a busy CPU, waiting for a second thread costs more
    heads = {lang: train_head(feats[lang][0], feats[lang][1], groups) for lang in langs}
    shipped = BTHead(load_file(str(SHIPPED_HEAD.path))["score.weight"][0].double(), torch.ones(1), float("nan"), {})

    def wins(head: BTHead, lang: str) -> list[float]:
        return margin_wins(head.margins(feats[lang][2], feats[lang][3]))

    matrix = {tr: {te: interval(wins(heads[tr], te), args.seed) for te in langs} for tr in langs}
    per_lang = []
    for lang in targets:
        en, own = wins(heads["en"], lang), wins(heads[lang], lang)
        per_lang.append({"language": lang, "english_rm": interval(en, args.seed), "target_rm": interval(own, args.seed),
                         "english_minus_target": paired(en, own, args.seed)})
    # the seed's "on average": items resampled jointly across the three languages (same items, translated)
    en_avg = [sum(v) / len(targets) for v in zip(*(wins(heads["en"], lang) for lang in targets), strict=True)]
    own_avg = [sum(v) / len(targets) for v in zip(*(wins(heads[lang], lang) for lang in targets), strict=True)]
    mean_diff = paired(en_avg, own_avg, args.seed)
    sensitivity = {}
    for lam in LAMBDAS:  # the same comparison with the penalty fixed instead of chosen per language
        fixed = {lang: train_head(feats[lang][0], feats[lang][1], groups, lam=lam) for lang in langs}
        e = [sum(v) / len(targets) for v in zip(*(wins(fixed["en"], lg) for lg in targets), strict=True)]
        o = [sum(v) / len(targets) for v in zip(*(wins(fixed[lg], lg) for lg in targets), strict=True)]
        sensitivity[str(lam)] = {"english_rm_mean": round(sum(e) / len(e), 3),
                                 "target_rm_mean": round(sum(o) / len(o), 3),
                                 "english_minus_target": paired(e, o, args.seed)}
    # representation shift (frozen backbone: no fine-tuning shift exists; this measures what language changes)
    head_cos = {f"{a}-{b}": round(cosine(heads[a].weight, heads[b].weight), 3)
                for i, a in enumerate(langs) for b in langs[i + 1:]}
    margin_corr = {}
    for lang in targets:
        both = torch.stack([heads[k].margins(feats[lang][2], feats[lang][3]) for k in ("en", lang)])
        margin_corr[lang] = round(float(torch.corrcoef(both)[0, 1]), 3)
    pooled = torch.cat([torch.cat([f[2], f[3]]) for f in feats.values()]).mean(0)
    diff_cos, feat_cos, centroid = {}, {}, {}
    en_c, en_r = feats["en"][2], feats["en"][3]
    for lang in targets:
        c, r = feats[lang][2], feats[lang][3]
        m, mm = matched_vs_mismatched(en_c - en_r, c - r)
        diff_cos[lang] = {"same_item": round(m, 3), "different_items": round(mm, 3)}
        m, mm = matched_vs_mismatched(torch.cat([en_c, en_r]) - pooled, torch.cat([c, r]) - pooled)
        feat_cos[lang] = {"same_item": round(m, 3), "different_items": round(mm, 3)}
        offset = torch.cat([c, r]).mean(0) - torch.cat([en_c, en_r]).mean(0)
        centroid[lang] = {"offset_norm_over_mean_item_spread": round(float(
            offset.norm() / (torch.cat([en_c, en_r]) - torch.cat([en_c, en_r]).mean(0)).norm(dim=1).mean()), 3),
            "english_head_cosine_with_offset": round(cosine(heads["en"].weight, offset), 3)}
    shipped_vs_new = {lang: {"shipped_head": interval(wins(shipped, lang), args.seed),
                             "new_english_head": matrix["en"][lang],
                             "new_minus_shipped": paired(wins(heads["en"], lang), wins(shipped, lang), args.seed)}
                      for lang in langs}
    categories = sorted({c for c, *_ in rows["en"][1]})
    by_cat = {}
    for lang in targets:
        en, own = wins(heads["en"], lang), wins(heads[lang], lang)
        by_cat[lang] = {c: {"english_rm": round(sum(w for w, (k, *_) in zip(en, rows[lang][1], strict=True) if k == c)
                                                / sum(k == c for k, *_ in rows[lang][1]), 3),
                            "target_rm": round(sum(w for w, (k, *_) in zip(own, rows[lang][1], strict=True) if k == c)
                                               / sum(k == c for k, *_ in rows[lang][1]), 3)} for c in categories}
    fit_s = time.perf_counter() - t_fit
    torch.set_num_threads(threads)
    cmd = ("python -m bench.cross_lingual " + " ".join(sys.argv[1:])).strip()
    tag = "h100" if "H100" in device else "cpu" if device.startswith("cpu") else "gpu"
    statement = verdict(mean_diff)
    result: dict[str, object] = {
        "device": device, "command": cmd, "data": str(MULTILINGUAL.relative_to(ROOT)),
        "languages": list(langs), "train_pairs_per_language": n_train, "test_pairs_per_language": n_test,
        "relevance_pairs": args.relevance_pairs,
        "recipe": "Bradley-Terry linear head on the frozen final hidden state of the embedded 0.5B model (features "
                  "through the serving runner), " + ("+ one relevance pair per prompt, " if augment else
                  "no relevance augmentation (--relevance-pairs off), ") + "standardised features, L2 penalty by "
                  f"5-fold CV over {list(LAMBDAS)} (same folds in every language), L-BFGS, float64",
        "feature_dtype": args.dtype, "l2_penalty_chosen": {lang: heads[lang].lam for lang in langs},
        "cv_accuracy": {lang: {str(k): round(v, 4) for k, v in heads[lang].cv.items()} for lang in langs},
        "accuracy_matrix_train_lang_by_test_lang": matrix,
        "english_rm_vs_target_rm": per_lang, "mean_over_targets_english_minus_target": mean_diff,
        "verdict": statement, "penalty_sensitivity": sensitivity,
        "by_category": by_cat,
        "representation": {"head_weight_cosine": head_cos, "margin_correlation_en_head_vs_target_head": margin_corr,
                           "pair_difference_cosine_en_vs_target": diff_cos,
                           "conversation_feature_cosine_en_vs_target_centered": feat_cos, "language_offset": centroid},
        "shipped_head_vs_new_english_head": shipped_vs_new,
        "seconds": {"features": cache_s, "fit_and_analysis": round(fit_s, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
    }
    lines = [f"# Cross-lingual reward-model replication ({device})", "",
             f"Command: `{cmd}` · data `{MULTILINGUAL.relative_to(ROOT)}`: {n_train} train pairs and {n_test} held-out "
             f"test pairs, each in {'/'.join(langs)} (translations of the same pairs) · one recipe for every head "
             "(`bench/train_reward_head.py`: frozen 0.5B features, Bradley-Terry, "
             + ("relevance augmentation, " if augment else "no relevance augmentation, ") + "L2 by CV, "
             "same folds) · accuracy = share of held-out pairs where the chosen response scores higher, [95% bootstrap "
             "interval]; differences are paired (same items) with their own interval.", "",
             "## English RM vs target-language RM on target-language test pairs", "",
             "| test language | English RM | target-language RM | English − target |", "|---|---|---|---|"]

    def cell(x: dict[str, object]) -> str:
        lo, hi = x["ci95"]  # type: ignore[misc]
        v = x.get("accuracy", x.get("difference"))
        if "difference" in x:
            return f"{float(v):+.3f} [{lo:+.3f}, {hi:+.3f}]"  # type: ignore[arg-type]
        return f"{float(v):.3f} [{lo:.3f}, {hi:.3f}]"  # type: ignore[arg-type]

    for row in per_lang:
        lines.append(f"| {row['language']} | {cell(row['english_rm'])} | {cell(row['target_rm'])} | "  # type: ignore[arg-type]
                     f"{cell(row['english_minus_target'])} |")  # type: ignore[arg-type]
    lines.append(f"| **mean of {'/'.join(targets)}** | | | **{cell(mean_diff)}** |")
    lines += ["", f"**Verdict:** {statement}", "",
              "## Every head on every test language", "",
              "| head trained on ↓ / tested on → | " + " | ".join(langs) + " | λ (CV) |",
              "|---" * (len(langs) + 2) + "|"]
    for tr in langs:
        lines.append(f"| {tr} | " + " | ".join(cell(matrix[tr][te]) for te in langs) + f" | {heads[tr].lam:g} |")
    lines += ["", f"Penalty fixed instead of chosen by CV (mean over {'/'.join(targets)}):", "",
              "| λ | English RM | target RMs | English − target |", "|---|---|---|---|"]
    for lam, v in sensitivity.items():
        lines.append(f"| {lam} | {v['english_rm_mean']:.3f} | {v['target_rm_mean']:.3f} | "
                     f"{cell(v['english_minus_target'])} |")  # type: ignore[arg-type]
    lines += ["", "By category (held-out pairs, English RM / target RM):", "",
              "| language | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
    for lang in targets:
        lines.append(f"| {lang} | " + " | ".join(
            f"{by_cat[lang][c]['english_rm']:.2f} / {by_cat[lang][c]['target_rm']:.2f}" for c in categories) + " |")
    lines += ["", "## Representation shift", "",
              "The backbone is frozen for every head, so the seed's mechanism (fine-tuning moves the representations "
              "away from the base model's) cannot act here; what differs between heads is only the training "
              "language of the same pairs. Measured on the held-out pairs:", "",
              "| | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|",
              "| cosine of head weights, en vs target | "
              + " | ".join(f"{head_cos[f'en-{t}']:.3f}" for t in targets) + " |",
              "| correlation of the two heads' margins on target pairs | "
              + " | ".join(f"{margin_corr[t]:.3f}" for t in targets) + " |",
              "| cosine of (chosen − rejected) features, same item en vs target (different items) | "
              + " | ".join(f"{diff_cos[t]['same_item']:.3f} ({diff_cos[t]['different_items']:.3f})"
                           for t in targets) + " |",
              "| cosine of centred conversation features, same item (different items) | "
              + " | ".join(f"{feat_cos[t]['same_item']:.3f} ({feat_cos[t]['different_items']:.3f})"
                           for t in targets) + " |",
              "| language offset of the feature centroid / mean item spread | "
              + " | ".join(f"{centroid[t]['offset_norm_over_mean_item_spread']:.3f}" for t in targets) + " |",
              "| cosine of English head with that offset | "
              + " | ".join(f"{centroid[t]['english_head_cosine_with_offset']:.3f}" for t in targets) + " |",
              "", "Other head-weight cosines: " + ", ".join(f"{k} {v:.3f}" for k, v in head_cos.items()
                                                           if not k.startswith("en-")) + ".", "",
              "## Shipped head (92 English pairs) vs the new English head (152)", "",
              "| test language | shipped head | new English head | new − shipped |", "|---|---|---|---|"]
    for lang in langs:
        v = shipped_vs_new[lang]
        lines.append(f"| {lang} | {cell(v['shipped_head'])} | {cell(v['new_english_head'])} | "  # type: ignore[arg-type]
                     f"{cell(v['new_minus_shipped'])} |")  # type: ignore[arg-type]
    feat_total = sum(v["cache_fill_model_s"] for v in cache_s.values())
    total_s = time.perf_counter() - t_start
    lines += ["", f"Time: features for {len(langs)} languages took {feat_total:.0f} s of model time when the caches "
              f"were filled (`~/.cache/alignserve/cache/rm_features/`); this run {total_s:.0f} s in all "
              f"(fits and analysis {fit_s:.0f} s)."]
    write_results(args.out, f"cross_lingual_replication_{tag}", result, lines)
    print("\n".join(lines))


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
    ap.add_argument("--replicate", action="store_true",
                    help="train English and target-language RMs with one recipe and compare them (Hong et al.)")
    ap.add_argument("--relevance-pairs", choices=("on", "off"), default="on",
                    help="--replicate: add the shipped recipe's relevance pair per prompt (on) or not (a quarter "
                         "fewer conversations to featurise)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="--replicate: target languages")
    args = ap.parse_args()
    if args.replicate:
        if args.dtype == "auto":
            args.dtype = "float32"  # what the CPU server and the shipped head's training use
        replicate(args)
        return

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
