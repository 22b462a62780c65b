"""Does alignment help? Linear Alignment against the base model, the principle as a system prompt,
Activation-RM steering and Best-of-N, judged three ways, with cost.

Prompt sets (``bench/data/quality_prompts.json``): ``hh`` — 50 helpful/harmless prompts (15 of them
borderline or unsafe) under one principle; ``pref`` — 50 personal-preference prompts (concise /
detailed, formal / casual, beginner / expert, vegan / halal); ``xl`` — 20 prompts in each of
Japanese, Chinese and Korean with an *English* principle.

Systems: ``base`` (no principle); ``prompt`` (the principle appended to the system message — the
cheap baseline); ``la_r1``, ``la_r3`` (Linear Alignment, fixed strength r) and ``la_adaptive``;
``steer`` (an Activation-RM profile compiled from English helpful/harmless examples, applied as
steering vectors) and ``la_r3+steer``; ``bon_2/4/8`` (N samples at temperature 0.8 from the
principle-prompted model, the English reward model keeps the best). Greedy decoding elsewhere.

``--systems authors`` instead evaluates Linear Alignment at the authors' settings: strength r = 3 on
``hh``, r = 5 on ``pref`` (their helpful/harmless and personal-preference settings) and r = 3 on
``xl`` (the authors have no cross-lingual setting; their HH value is our choice). Systems: ``base``,
``prompt``, ``la_authors`` (greedy), ``la_authors_request_T0.7`` (sampled, ``la.sampling:
"request"``: the masked combined logits drawn at the request's temperature 0.7, top-p 1) and
``la_authors_sampled`` (``la.sampling: "authors"``: the masked ``softmax(l / 0.5)``), plus
``prompt_sampled`` (principle prompt, temperature 0.7, top-p 1). Each sampled system draws
``--samples`` K answers per prompt with the same seeds across systems; each sample is judged against
the greedy ``base`` answer and the interval is a bootstrap over *prompts* (a prompt's K samples stay
together). Greedy ``la_authors`` is also decoded under ``la.sampling: "request"`` and must give the
same texts (the argmax is invariant to the temperature); the check is reported, not judged.

Judges, each system against ``base`` on the same prompt: the English reward model (reward
difference), the Activation RM (its P("Yes") difference) and the generative judge asked pairwise
"is A better than B on <principle>?" in both orders (position swapped, averaged). Win rate =
(wins + ties/2) / n with a 95% bootstrap interval; plus mean response tokens (length hacking),
language match (answer in the prompt's language), decoded tokens and wall seconds per answer.

    # H100, vLLM engine + vLLM reward model in one process (~5 min):
    python -m bench.quality_eval --backend vllm --home /tmp/ahome
    # CPU, transformers engine, reduced size (~15 min on 2 cores):
    python -m bench.quality_eval --backend transformers --per-set 4 --max-tokens 64 --shots 8
    # CPU, the authors' LA settings, both sampling modes, 3 seeds per prompt (~20 min on 2 cores):
    python -m bench.quality_eval --systems authors --sets hh,pref --per-set 8 --max-tokens 64 --samples 3 --shots 8
    # redraw the plot from a result file:
    python -m bench.quality_eval --plot-only bench/results/quality_eval_h100.json

Writes bench/results/quality_eval_<device>.json, .md and .png (the plot needs matplotlib);
``--systems authors`` writes quality_eval_authors_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.harness import (
    Provenance,
    bootstrap_ci,
    device_label,
    free_gpu,
    model_path,
    transformers_engine,
    vllm_engine,
    write_results,
)
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec, SteeringVector
from service.config import EMBEDDED_MODEL, Settings, default_home
from service.engines.base import Engine, GenerationRequest, Message
from service.language.fidelity import LanguageDetector
from service.reward.activation_rm import CompiledARM, CompileSettings, compile_activation_rm
from service.reward.factory import resolve_reward_model
from service.reward.judge import DEFAULT_RUBRIC, JUDGE_SYSTEM, YES_NO, judge_conversation
from service.reward.reward_model import rm_conversation

from .cross_lingual import english_examples

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SYSTEM = "You are a helpful assistant."
BON = (2, 4, 8)
TIE = {"reward_model": 0.05, "activation_rm": 0.005, "judge": 0.01}
SETS = ("hh", "pref", "xl")
# The authors' fixed ratio per prompt set: 3 helpful/harmless, 5 personal preferences; xl (no
# counterpart in the paper) takes the HH value.
AUTHORS_STRENGTH = (("hh", 3.0), ("pref", 5.0), ("xl", 3.0))
# Sampled systems of the authors' set: a moderate chat temperature above the authors' 0.5, and top-p 1
# so that the two LA modes differ only in the temperature of the draw from the masked combined logits.
SAMPLED_TEMPERATURE = 0.7


@dataclass(frozen=True)
class Item:
    set: str
    prompt: str
    principle: str
    lang: str


@dataclass(frozen=True)
class System:
    name: str
    la: LinearAlignmentConfig | None = None
    steer: bool = False
    prompt_principle: bool = False
    strength_by_set: tuple[tuple[str, float], ...] = ()  # overrides ``la.strength`` per prompt set
    temperature: float = 0.0  # 0 = greedy
    samples: int = 1  # answers per prompt (sampled systems), seeds shared across systems

    def strength(self, set_: str) -> float:
        assert self.la is not None
        return dict(self.strength_by_set).get(set_, self.la.strength)


def load_items(per_set: int | None, sets: Sequence[str] = SETS) -> list[Item]:
    d = json.loads((ROOT / "bench" / "data" / "quality_prompts.json").read_text())
    hh = [Item("hh", p, d["hh_principle"], "en") for p in d["hh"]]
    pref = [Item("pref", p, g["principle"], "en") for g in d["preferences"] for p in g["prompts"]]
    xl = [Item("xl", x[lang], x["principle"], lang) for lang in ("ja", "zh", "ko") for x in d["crosslingual"]]

    def spread(items: list[Item]) -> list[Item]:  # an even spread keeps every kind of prompt in a subset
        if per_set is None or per_set >= len(items):
            return items
        step = len(items) / per_set
        return [items[int(i * step)] for i in range(per_set)]

    by_set = {"hh": spread(hh), "pref": spread(pref), "xl": spread(xl)}
    return [it for s in SETS if s in sets for it in by_set[s]]


def systems(steer_strength: float) -> list[System]:
    out = [System("base"), System("prompt", prompt_principle=True)]
    out += [System(f"la_r{r:g}", la=LinearAlignmentConfig("-", strength=r)) for r in (1.0, 3.0)]
    out.append(System("la_adaptive", la=LinearAlignmentConfig("-", adaptive=True)))
    if steer_strength > 0:
        out += [System("steer", steer=True), System("la_r3+steer", la=LinearAlignmentConfig("-", strength=3.0),
                                                    steer=True)]
    return out


def authors_systems(samples: int, temperature: float = SAMPLED_TEMPERATURE) -> list[System]:
    """LA at the authors' strengths, greedy and sampled in both ``la.sampling`` modes (module docstring)."""
    la = LinearAlignmentConfig("-", sampling="authors")
    return [System("base"), System("prompt", prompt_principle=True),
            System("la_authors", la=la, strength_by_set=AUTHORS_STRENGTH),
            System(f"la_authors_request_T{temperature:g}", la=replace(la, sampling="request"),
                   strength_by_set=AUTHORS_STRENGTH, temperature=temperature, samples=samples),
            System("la_authors_sampled", la=la, strength_by_set=AUTHORS_STRENGTH, temperature=temperature,
                   samples=samples),
            System("prompt_sampled", prompt_principle=True, temperature=temperature, samples=samples)]


def greedy_twin(sys_: System) -> System:
    """The same greedy LA system under ``la.sampling: "request"`` (its texts must not change)."""
    assert sys_.la is not None and sys_.temperature == 0.0
    return replace(sys_, name=f"{sys_.name}@request", la=replace(sys_.la, sampling="request"))


def messages(item: Item, with_principle: bool) -> list[Message]:
    system = f"{DEFAULT_SYSTEM}\n\n{item.principle}" if with_principle else DEFAULT_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": item.prompt}]


def requests_for(items: list[Item], sys_: System, steering: tuple[SteeringVector, ...],
                 max_tokens: int, seed: int = 0) -> list[GenerationRequest]:
    """One request per prompt (``sys_.samples`` per prompt, sample-major: answer j is for prompt
    j % len(items)); sample k of prompt i has seed ``seed + 1000 k + i`` in every sampled system."""
    out = []
    for k in range(sys_.samples):
        for i, it in enumerate(items):
            la = None
            if sys_.la is not None:
                la = replace(sys_.la, principle=it.principle, strength=sys_.strength(it.set))
            if sys_.temperature > 0:
                rid = f"{sys_.name}-{i}-{k}"
                params = SamplingParams(max_tokens=max_tokens, temperature=sys_.temperature, seed=seed + 1000 * k + i)
            else:
                rid, params = f"{sys_.name}-{i}", SamplingParams(max_tokens=max_tokens)
            out.append(GenerationRequest(rid, messages(it, sys_.prompt_principle), params,
                                         AlignmentSpec(la=la, steering=steering if sys_.steer else ())))
    return out


def sample_requests(items: list[Item], n: int, max_tokens: int, seed: int) -> list[GenerationRequest]:
    return [GenerationRequest(f"bon-{i}-{k}", messages(it, True),
                              SamplingParams(max_tokens=max_tokens, temperature=0.8, top_p=0.95,
                                             seed=seed + 1000 * k + i))
            for k in range(n) for i, it in enumerate(items)]


def pairwise_conversation(item: Item, a: str, b: str) -> list[Message]:
    user = (f"[Question]\n{item.prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n[Criterion]\n{item.principle}\n\n"
            "Is Response A better than Response B on this criterion? Answer Yes or No.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def prompt_means(values: list[float], groups: Sequence[int] | None) -> list[float]:
    """Per-prompt means of ``values`` (``groups[j]``: the prompt of value j), the unit a bootstrap
    resamples: with K values per prompt their mean is the mean of ``values``. No groups: as is."""
    if groups is None:
        return values
    by: dict[int, list[float]] = {}
    for g, v in zip(groups, values, strict=True):
        by.setdefault(g, []).append(v)
    return [sum(v) / len(v) for v in by.values()]


def win_tie_loss(diffs: list[float], tie: float, groups: Sequence[int] | None = None) -> dict[str, Any]:
    """Win rate over all ``diffs``; the interval resamples prompts (``groups``) when given."""
    outcomes = [1.0 if d > tie else 0.0 if d < -tie else 0.5 for d in diffs]
    lo, hi = bootstrap_ci(prompt_means(outcomes, groups))
    return {"win_rate": round(sum(outcomes) / len(outcomes), 3), "ci95": [round(lo, 3), round(hi, 3)],
            "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
            "losses": sum(o == 0.0 for o in outcomes)}


class Backend:
    """Generator, reward model and judge calls on one backend."""

    def __init__(self, kind: str, model: str, rm_path: str, device: str, dtype: str) -> None:
        self.kind = kind
        self.engine: Engine
        if kind == "vllm":
            from service.reward.reward_model import VLLMRewardModel, VLLMRewardSettings

            self.engine = vllm_engine(model, DEFAULT_SYSTEM, gpu_memory_utilization=0.6, max_model_len=4096)
            self.rm: Any = VLLMRewardModel(rm_path, VLLMRewardSettings(gpu_memory_utilization=0.15))
        else:
            from service.reward.reward_model import TransformersRewardModel

            self.engine = transformers_engine(model, device=device, dtype=dtype, max_model_len=4096,
                                              default_system=DEFAULT_SYSTEM)
            self.rm = TransformersRewardModel(rm_path, device=device, dtype=dtype, max_length=4096)
        self.batch = 1024 if kind == "vllm" else 16

    def generate(self, reqs: list[GenerationRequest]) -> tuple[list[Any], float]:
        t = time.perf_counter()
        out: list[Any] = []
        for k in range(0, len(reqs), self.batch):
            out += self.engine.generate(reqs[k:k + self.batch])
        return out, time.perf_counter() - t

    def rewards(self, convs: list[list[Message]]) -> list[float]:
        return list(self.rm.rewards(convs))

    def yes(self, convs: list[list[Message]], steering: tuple[SteeringVector, ...] = ()) -> list[float]:
        out: list[float] = []
        for k in range(0, len(convs), self.batch):
            out += self.engine.label_probability(convs[k:k + self.batch], YES_NO, steering)
        return out

    def close(self) -> None:
        self.rm.close()
        self.engine.close()


def argmax(xs: list[float]) -> int:
    """Index of the first largest value."""
    return max(range(len(xs)), key=xs.__getitem__)


def compile_profile(model: str, device: str, dtype: str, shots: int, seed: int) -> CompiledARM:
    """The Activation-RM profile (English helpful/harmless examples), on the transformers engine."""
    eng = transformers_engine(model, device=device, dtype=dtype, max_model_len=2048, default_system=DEFAULT_SYSTEM)
    shape = (eng.num_layers, eng.num_heads, eng.head_dim, eng.max_model_len)

    def progress(phase: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"  activation_rm-{shots}: {phase} {done}/{total}", flush=True)

    holder = [eng]
    arm = compile_activation_rm(lambda call: call(holder[0]), english_examples(shots, seed), DEFAULT_RUBRIC,
                                CompileSettings(seed=seed), shape, model, progress)
    eng.close()
    holder.clear()
    del eng
    free_gpu()
    return arm


def evaluate(args: argparse.Namespace) -> tuple[dict[str, Any], Provenance]:
    """The results payload (without the provenance keys) and this run's provenance."""
    t_start = time.perf_counter()
    home = Path(args.home) if args.home else default_home()
    model = model_path(args.model, home)
    resolved = resolve_reward_model(Settings(model=EMBEDDED_MODEL, reward_model=args.reward_model, home=home))
    if resolved is None:
        raise SystemExit("no reward model: pass --reward-model embedded or an RM folder")
    authors = args.systems == "authors"
    items = load_items(args.per_set, [x for x in args.sets.split(",") if x])
    if not items:
        raise SystemExit(f"no prompts in sets {args.sets!r} (choose from {', '.join(SETS)})")
    device = args.device if args.backend == "transformers" else "cuda"
    t = time.perf_counter()
    arm = compile_profile(model, device, "float32" if args.backend == "vllm" else args.dtype, args.shots, args.seed)
    compile_s = time.perf_counter() - t
    print(f"compiled the Activation-RM profile in {compile_s:.0f}s: heads {arm.heads}", flush=True)
    be = Backend(args.backend, model, resolved[0], device, args.dtype)
    dev_name = device_label(device)
    steering = tuple(arm.generation_steering(args.steer_strength))
    lang = LanguageDetector()
    print(f"{len(items)} prompts on {dev_name}, backend {args.backend}", flush=True)

    # answers[k][j] is for prompt j % n (sampled systems: K answers per prompt, sample-major)
    n = len(items)
    answers: dict[str, list[str]] = {}
    tokens: dict[str, list[int]] = {}
    decoded: dict[str, float] = {}
    wall: dict[str, float] = {}
    sys_list = authors_systems(args.samples) if authors else systems(args.steer_strength)
    settings: dict[str, dict[str, Any]] = {}
    for s in sys_list:
        res, secs = be.generate(requests_for(items, s, steering, args.max_tokens, args.seed))
        answers[s.name] = [r.text for r in res]
        tokens[s.name] = [r.completion_tokens for r in res]
        streams = 2 if s.la is not None else 1
        decoded[s.name] = streams * sum(tokens[s.name]) / len(res)
        wall[s.name] = secs / len(res)
        settings[s.name] = {"temperature": s.temperature, "samples": s.samples,
                            "la_sampling": s.la.sampling if s.la else None,
                            "strength": {x: s.strength(x) for x in SETS} if s.la else None}
        print(f"  {s.name}: {secs:.1f}s, {sum(tokens[s.name]) / len(res):.0f} tokens/answer", flush=True)

    greedy_check: dict[str, Any] | None = None
    if authors:
        twin = greedy_twin(next(s for s in sys_list if s.name == "la_authors"))
        res, secs = be.generate(requests_for(items, twin, steering, args.max_tokens, args.seed))
        same = [r.text == a for r, a in zip(res, answers["la_authors"], strict=True)]
        greedy_check = {"compared": "la_authors under la.sampling 'authors' vs 'request'", "n": n,
                        "equal": sum(same), "differing_prompts": [items[i].prompt for i in range(n) if not same[i]]}
        print(f"  {twin.name}: {secs:.1f}s, greedy texts equal to la_authors: {sum(same)}/{n}", flush=True)
    else:
        res, secs = be.generate(sample_requests(items, max(BON), args.max_tokens, args.seed))
        t = time.perf_counter()
        sample_rewards = be.rewards([rm_conversation(items[j % n].prompt, r.text) for j, r in enumerate(res)])
        rm_select_s = time.perf_counter() - t
        for big_n in BON:
            name = f"bon_{big_n}"
            best = [argmax([sample_rewards[k * n + i] for k in range(big_n)]) for i in range(n)]
            answers[name] = [res[best[i] * n + i].text for i in range(n)]
            tokens[name] = [res[best[i] * n + i].completion_tokens for i in range(n)]
            decoded[name] = sum(res[k * n + i].completion_tokens for k in range(big_n) for i in range(n)) / n
            wall[name] = (secs + rm_select_s) * big_n / max(BON) / n
        print(f"  best-of-{max(BON)} samples: {secs:.1f}s generation, {rm_select_s:.1f}s reward model", flush=True)

    t = time.perf_counter()
    names = list(answers)
    rewards = {k: be.rewards([rm_conversation(items[j % n].prompt, a) for j, a in enumerate(answers[k])])
               for k in names}
    arm_steer = tuple(arm.scoring_steering())
    arm_p = {k: be.yes([judge_conversation(items[j % n].prompt, a, DEFAULT_RUBRIC)
                        for j, a in enumerate(answers[k])], arm_steer) for k in names}
    judge_pref: dict[str, list[float]] = {}
    base = answers["base"]
    for k in names[1:]:
        trios = [(items[j % n], a, base[j % n]) for j, a in enumerate(answers[k])]
        fwd = be.yes([pairwise_conversation(it, a, b) for it, a, b in trios])
        rev = be.yes([pairwise_conversation(it, b, a) for it, a, b in trios])
        judge_pref[k] = [0.0 if a == b else (f + (1.0 - r)) / 2 - 0.5
                         for f, r, (_, a, b) in zip(fwd, rev, trios, strict=True)]
    judge_s = time.perf_counter() - t
    be.close()

    langs_prompt = [lang.detect(it.prompt) for it in items]
    rows = []
    for k in names:
        for subset in ("all", *SETS):
            idx = [j for j in range(len(answers[k])) if subset == "all" or items[j % n].set == subset]
            if not idx:
                continue
            groups = [j % n for j in idx]
            row: dict[str, Any] = {"system": k, "set": subset, "n": len(idx), "prompts": len(set(groups)),
                                   "mean_tokens": round(sum(tokens[k][j] for j in idx) / len(idx), 1),
                                   "language_match": round(sum(lang.detect(answers[k][j]) == langs_prompt[j % n]
                                                               for j in idx) / len(idx), 3),
                                   "mean_reward": round(sum(rewards[k][j] for j in idx) / len(idx), 3)}
            if k != "base":
                row["reward_model"] = win_tie_loss([rewards[k][j] - rewards["base"][j % n] for j in idx],
                                                   TIE["reward_model"], groups)
                row["activation_rm"] = win_tie_loss([arm_p[k][j] - arm_p["base"][j % n] for j in idx],
                                                    TIE["activation_rm"], groups)
                row["judge"] = win_tie_loss([judge_pref[k][j] for j in idx], TIE["judge"], groups)
                row["judge"]["mean_preference"] = round(sum(judge_pref[k][j] for j in idx) / len(idx), 4)
            if subset == "all":
                row["decoded_tokens_per_answer"] = round(decoded[k], 1)
                row["wall_s_per_answer"] = round(wall[k], 4)
            rows.append(row)
    examples = {k: [{"prompt": items[i].prompt, "principle": items[i].principle, "answer": answers[k][i]}
                    for i in (0, n // 2, n - 1)] for k in names}
    out: dict[str, Any] = {}
    if authors:
        pair = ("la_authors_sampled", f"la_authors_request_T{SAMPLED_TEMPERATURE:g}")
        out = {"system_set": "authors", "samples": args.samples, "sampled_temperature": SAMPLED_TEMPERATURE,
               "greedy_equality": greedy_check, "systems": settings,
               "sampling_modes": mode_comparison(items, answers, rewards, arm_p, tokens, *pair)}
    prov = Provenance.collect(dev_name)
    return {"backend": args.backend, "tag": prov.tag, "model": model, "reward_model": resolved[1],
            "prompts": len(items),
            "sets": {s: sum(it.set == s for it in items) for s in SETS},
            "max_tokens": args.max_tokens, "steer_strength": args.steer_strength, "activation_rm_shots": args.shots,
            "activation_rm_heads": arm.heads, "tie_bands": TIE, **out,
            "seconds": {"compile": round(compile_s, 1), "judging": round(judge_s, 1),
                        "total": round(time.perf_counter() - t_start, 1)},
            "rows": rows, "examples": examples}, prov


def mode_comparison(items: list[Item], answers: dict[str, list[str]], rewards: dict[str, list[float]],
                    arm_p: dict[str, list[float]], tokens: dict[str, list[int]], a: str, b: str) -> dict[str, Any]:
    """System ``a`` minus ``b`` on the same prompt and seed (paired: both drew with the same seeds):
    mean English-RM reward and Activation-RM P(Yes) differences, bootstrap over prompts; identical texts."""
    n = len(items)
    out: dict[str, Any] = {"a": a, "b": b, "pairs": len(answers[a]),
                           "identical_texts": sum(x == y for x, y in zip(answers[a], answers[b], strict=True)),
                           "mean_tokens": [round(sum(tokens[a]) / len(tokens[a]), 1),
                                           round(sum(tokens[b]) / len(tokens[b]), 1)]}
    greedy = answers["la_authors"]
    out["identical_to_greedy"] = {x: sum(t == greedy[j % n] for j, t in enumerate(answers[x])) for x in (a, b)}
    out["distinct_texts_per_prompt"] = {
        x: round(sum(len({answers[x][j] for j in range(i, len(answers[x]), n)}) for i in range(n)) / n, 2)
        for x in (a, b)}
    groups = [j % n for j in range(len(answers[a]))]
    for key, scores in (("reward_diff", rewards), ("arm_p_yes_diff", arm_p)):
        d = [x - y for x, y in zip(scores[a], scores[b], strict=True)]
        lo, hi = bootstrap_ci(prompt_means(d, groups))
        out[key] = {"mean": round(sum(d) / len(d), 4), "ci95": [round(lo, 4), round(hi, 4)]}
    return out


def cell(r: dict[str, Any], k: str) -> str:
    if k not in r:
        return "–"
    return f"{r[k]['win_rate']:.2f} [{r[k]['ci95'][0]:.2f}, {r[k]['ci95'][1]:.2f}]"


def markdown(res: dict[str, Any], prov: Provenance) -> str:
    if res.get("system_set") == "authors":
        return authors_markdown(res, prov)
    lines = [f"# Quality evaluation: alignment vs base and Best-of-N ({prov.device}, {res['backend']} engine)", "",
             f"Command: `{prov.command}` · {res['prompts']} prompts {res['sets']} · greedy, max_tokens "
             f"{res['max_tokens']} · reward model `{res['reward_model']}` · Activation RM from "
             f"{res['activation_rm_shots']} English examples, steering strength {res['steer_strength']} · total "
             f"{res['seconds']['total']:.0f} s.", "",
             "Win rate against `base` on the same prompt = (wins + ties/2)/n, [95% bootstrap interval]. Judges: "
             "English RM (reward difference), Activation RM (P(Yes) difference), generative judge (pairwise on the "
             "prompt's principle, both orders averaged).", "",
             "| system | RM win | ARM win | judge win | mean tokens | lang match | decoded tok/answer | s/answer |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in res["rows"] if r["set"] == "all"):
        lines.append(f"| {r['system']} | {cell(r, 'reward_model')} | {cell(r, 'activation_rm')} | "
                     f"{cell(r, 'judge')} | {r['mean_tokens']} | {r['language_match']:.2f} | "
                     f"{r['decoded_tokens_per_answer']} | "
                     f"{r['wall_s_per_answer']:.3f} |")
    lines += ["", "By prompt set (judge win rate / RM win rate / mean tokens / language match):", "",
              "| system | hh | pref | xl (ja/zh/ko, English principle) |", "|---|---|---|---|"]
    by = {(r["system"], r["set"]): r for r in res["rows"]}
    for name in dict.fromkeys(r["system"] for r in res["rows"]):
        cells = []
        for s in ("hh", "pref", "xl"):
            r = by.get((name, s))
            if r is None:
                cells.append("–")
                continue
            j = f"{r['judge']['win_rate']:.2f}" if "judge" in r else "–"
            m = f"{r['reward_model']['win_rate']:.2f}" if "reward_model" in r else "–"
            cells.append(f"{j} / {m} / {r['mean_tokens']} / {r['language_match']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def authors_markdown(res: dict[str, Any], prov: Provenance) -> str:
    """The ``--systems authors`` report: settings, win rates, the greedy check, the two sampling modes."""
    k = res["samples"]
    sets = {s: c for s, c in res["sets"].items() if c}
    strengths = res["systems"]["la_authors"]["strength"]
    lines = [f"# Linear Alignment at the authors' settings, both sampling modes ({prov.device}, "
             f"{res['backend']} engine)",
             "", f"Command: `{prov.command}` · {res['prompts']} prompts {sets} · max_tokens {res['max_tokens']} · "
             f"reward model `{res['reward_model']}` · Activation RM from {res['activation_rm_shots']} English "
             "examples · "
             f"total {res['seconds']['total']:.0f} s.", "",
             "Strength r per set (the authors': 3 helpful/harmless, 5 personal preferences; xl takes 3): "
             + ", ".join(f"{s} {strengths[s]:g}" for s in sets)
             + ". Plausibility mask: top-p 0.8 of softmax(l_in/0.5).",
             "", "| system | decoding | LA sampling | answers per prompt |", "|---|---|---|---|"]
    for name, st in res["systems"].items():
        dec = "greedy" if st["temperature"] == 0 else f"sampled, request T {st['temperature']:g}, top-p 1"
        mode = {"request": f"request (draw at T {st['temperature']:g})" if st["temperature"] else "request",
                "authors": "authors (draw from masked softmax(l/0.5))" if st["temperature"] else "authors",
                None: "–"}[st["la_sampling"]]
        lines.append(f"| {name} | {dec} | {mode} | {st['samples']} |")
    lines += ["", f"Win rate against greedy `base` on the same prompt = (wins + ties/2)/n over all answers (a sampled "
              f"system: {k} seeds per prompt, each judged against base; the seeds are shared by the sampled systems). "
              "95% bootstrap intervals resample *prompts* (a prompt's samples stay together), so their width reflects "
              "the number of prompts, not of samples. Judges: English RM (reward difference), Activation RM (P(Yes) "
              "difference), generative judge (pairwise on the prompt's principle, both orders averaged).", "",
              "| system | n (prompts) | RM win | ARM win | judge win | mean tokens | decoded tok/answer | s/answer |",
              "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in res["rows"] if r["set"] == "all"):
        lines.append(f"| {r['system']} | {r['n']} ({r['prompts']}) | {cell(r, 'reward_model')} | "
                     f"{cell(r, 'activation_rm')} | {cell(r, 'judge')} | {r['mean_tokens']} | "
                     f"{r['decoded_tokens_per_answer']} | {r['wall_s_per_answer']:.2f} |")
    lines += ["", "By prompt set (RM win / judge win, [95% interval of the RM win]):", "",
              "| system | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    by = {(r["system"], r["set"]): r for r in res["rows"]}
    for name in dict.fromkeys(r["system"] for r in res["rows"]):
        if name == "base":
            continue
        cells = []
        for s in sets:
            r = by[(name, s)]
            cells.append(f"{r['reward_model']['win_rate']:.2f} / {r['judge']['win_rate']:.2f} "
                         f"[{r['reward_model']['ci95'][0]:.2f}, {r['reward_model']['ci95'][1]:.2f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    g = res["greedy_equality"]
    lines += ["", f"**Greedy check.** Greedy output does not depend on `la.sampling` (dividing the aligned logits by "
              f"a temperature does not move their argmax). Measured: greedy `la_authors` decoded under `la.sampling: "
              "'authors'` and under `'request'` gave"
              f" identical texts for {g['equal']}/{g['n']} prompts"
              + (f" (differing: {g['differing_prompts']})." if g["differing_prompts"] else ".")]
    m = res["sampling_modes"]
    lines += ["", f"**The two sampling modes, paired** (`{m['a']}` − `{m['b']}`, same prompt and seed, {m['pairs']} "
              f"pairs, bootstrap over prompts): English-RM reward difference {m['reward_diff']['mean']:+.3f} "
              f"[{m['reward_diff']['ci95'][0]:+.3f}, {m['reward_diff']['ci95'][1]:+.3f}]; Activation-RM P(Yes) "
              f"difference {m['arm_p_yes_diff']['mean']:+.4f} [{m['arm_p_yes_diff']['ci95'][0]:+.4f}, "
              f"{m['arm_p_yes_diff']['ci95'][1]:+.4f}]; identical texts {m['identical_texts']}/{m['pairs']}; mean "
              f"tokens {m['mean_tokens'][0]} vs {m['mean_tokens'][1]}. Sampled answers identical to the greedy "
              "`la_authors` answer: "
              + ", ".join(f"`{x}` {c}/{m['pairs']}" for x, c in m["identical_to_greedy"].items())
              + "; distinct texts per prompt (of " + str(res["samples"]) + " seeds): "
              + ", ".join(f"`{x}` {c}" for x, c in m["distinct_texts_per_prompt"].items())
              + ". (The mask keeps the top-p 0.8 nucleus of softmax(l_in/0.5); where it holds one token, either "
              "mode must pick it, so the modes can only differ at steps where the sharpened principle "
              "distribution leaves several tokens.)", ""]
    wins = [r[j] for r in res["rows"] if r["set"] == "all" and r["system"] != "base"
            for j in ("reward_model", "activation_rm", "judge")]
    over = sum(w["ci95"][0] <= 0.5 <= w["ci95"][1] for w in wins)
    width = max(w["ci95"][1] - w["ci95"][0] for w in wins)
    lines += ["**What this does and does not show.** "
              f"{over} of {len(wins)} overall win-rate intervals contain 0.5 (no detectable difference from base); the "
              f"widest is {width:.2f} wide. With {res['prompts']} prompts, {res['max_tokens']}-token answers, the "
              "embedded 0.5B model as generator and judges of the same small size, this run shows that the authors' "
              "settings and both sampling modes run end to end and how they compare on these prompts; it is not "
              "evidence that one mode is better in general, nor a replication of the paper's GPT-4 / RM results on "
              "7B models. Differences smaller than the intervals are not findings. The RM win rates of sampled systems "
              "mix the sampling temperature's effect with LA's (compare with `prompt_sampled`)."]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path, device: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib; then --plot-only JSON)")
        return False
    rows = [r for r in res["rows"] if r["set"] == "all" and r["system"] != "base"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, judge, title in ((axes[0], "judge", "generative judge (pairwise, swapped)"),
                             (axes[1], "reward_model", "English reward model")):
        for r in rows:
            x, y = r["decoded_tokens_per_answer"], r[judge]["win_rate"]
            lo, hi = r[judge]["ci95"]
            color = "tab:orange" if r["system"].startswith("bon") else "tab:blue"
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", color=color, capsize=3)
            ax.annotate(r["system"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("decoded tokens per answer (log)")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("win rate vs base")
    fig.suptitle(f"Win rate vs cost — {res['prompts']} prompts, {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["vllm", "transformers"], default="transformers",
                    help="generator/judge engine (vllm needs a GPU and vLLM installed)")
    ap.add_argument("--model", default=None, help="generator HF folder (default: the embedded 0.5B model)")
    ap.add_argument("--home", default=None, help="alignserve home (default ~/.cache/alignserve)")
    ap.add_argument("--reward-model", default="embedded", help="as `alignserve serve --reward-model`")
    ap.add_argument("--device", default="cpu", help="transformers backend device")
    ap.add_argument("--dtype", default="float32", help="transformers backend dtype")
    ap.add_argument("--per-set", type=int, default=None, help="prompts per set (default: all 160)")
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated prompt sets (hh, pref, xl)")
    ap.add_argument("--systems", choices=["default", "authors"], default="default",
                    help="default: base/prompt/LA r1,r3,adaptive/steering/BoN; authors: LA at the authors' "
                         "r (3 hh, 5 pref) greedy and sampled in both la.sampling modes")
    ap.add_argument("--samples", type=int, default=3, help="answers per prompt of the sampled systems (authors set)")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--shots", type=int, default=32, help="English examples for the Activation-RM profile")
    ap.add_argument("--steer-strength", type=float, default=4.0, help="0 drops the steering systems")
    ap.add_argument("--seed", type=int, default=0, help="Activation-RM examples and compile, sampled answers")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    ap.add_argument("--plot-only", type=Path, default=None, help="redraw the PNG from a result JSON")
    args = ap.parse_args(argv)
    random.seed(args.seed)
    if args.plot_only:
        res = json.loads(args.plot_only.read_text())
        plot(res, args.plot_only.with_suffix(".png"), res["device"])
        return
    res, prov = evaluate(args)
    md = markdown(res, prov)
    authors = args.systems == "authors"
    stem = write_results(args.out, "quality_eval_authors" if authors else "quality_eval", res, md, prov)
    print(md)
    if not authors:
        plot(res, stem.with_suffix(".png"), prov.device)


if __name__ == "__main__":
    main()
