"""Activation Reward Models (Chai et al., 2025): compile a profile from few-shot examples, then
score with the selected heads patched and steer generation along them.

Compilation has three phases, each a series of short engine calls (so generation requests keep
being served in between):

1. ``means`` — few-shot contexts (labelled demos as earlier chat turns, then one query in the
   zero-shot judge format) are run and every head's output at the readout position (the last
   prompt token) is averaged over contexts.
2. ``selection`` — REINFORCE picks the heads whose mean, patched into zero-shot queries at the
   readout position, best predicts the labels (``alignment.head_selection``); of its ranking,
   the prefix (at most ``num_heads`` long) with the best reward is kept. The reward is the
   ranking of good above bad responses of the same prompt (default) or the MTV label
   likelihood (``objective="likelihood"``), which on small models mostly buys recalibration.
3. ``directions`` — every head's output at the last token of each example response; the heads
   that best separate accepted from rejected responses (at most ``num_heads``) get their
   mass-mean direction and spread, for steering during generation (Inference-Time Intervention).

Two formats (Chai et al. score both): ``scalar`` asks the judge's Yes/No question about one
response (``judge``), so a profile with no heads scores exactly like ``method="judge"``; ``ranked``
shows the prompt and two responses as "A" and "B" and asks which is better (``ranked``). A ranked
profile is compiled from chosen/rejected pairs of the same prompt: its few-shot contexts are ranked
demos answered with the better response's letter (answers alternate A/B), its selection queries
are every pair in both orders, and it scores N candidates by mean win probability, each pair read
in both orders (``ranked.ranked_scores``).

REINFORCE settings, ours next to Multimodal Task Vectors' official code
(github.com/Brandon3964/MultiModal-Task-Vector, ``MTV/mtv_utils.py::reinforce`` and ``mtv_eval.py``):

==================  =========================================  =========================================
                    MTV (Huang et al., 2024)                    alignserve
==================  =========================================  =========================================
policy init         logit −1 per head (p = 0.27)                p = 0.2 (logit −1.39), ``init_prob``
optimiser           Adam, lr 0.1, on Σ log p(mask)·R            plain gradient step, lr 0.5, on the mean
                                                                over the draw of R·(mask − p)
reward              −cross-entropy of the target token          ``ranking`` (default): log σ(z_good −
                                                                z_bad) over same-prompt pairs;
                                                                ``likelihood``: label log-likelihood
reward scaling      (R − mean) / (std + 1e-3) over the draw     (R − mean) / std over the draw (no step
                                                                if std ≈ 0)
masks per step      32                                          ``samples`` = 4
steps               600 (``epoch = 600`` at commit 3aea2ae;     ``iterations`` = 100 (profile default;
                    one zero-shot query per step, drawn from    every step scores the whole pool of ≤ 64
                    100 random training examples)               queries, or ≤ 32 pairs × 2 orders)
means               ``--num_example`` contexts of               ≤ 32 contexts (one per example, or per
                    ``--num_shot`` shots (defaults 100 × 4)     pair) of ``shots_per_context`` = 4
heads kept          a mask sampled from the policy (best of     the ``num_heads`` most probable heads,
                    10 by validation loss; threshold 0.8 for    cut at the prefix with the best reward
                    Idefics2)                                   on the pool
==================  =========================================  =========================================

Why they differ: every draw here is scored on the whole pool (one one-token readout per query), so
a step is less noisy than MTV's single-query step but costs ``samples`` pool readouts; fewer masks
and steps keep a CPU compile in minutes. The head set is a deterministic prefix of the learnt
ranking so that a recompile with the same seed gives the same heads.
"""

from __future__ import annotations

import json
import random
import struct
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..alignment.head_selection import (
    ReinforceConfig,
    label_log_likelihood,
    mass_mean_directions,
    pair_accuracy,
    preference_pairs,
    ranking_reward,
    reinforce_head_selection,
    separation,
    top_heads,
)
from ..alignment.spec import SteeringVector
from ..engines.base import Engine, Message, Readout
from .judge import JUDGE_SYSTEM, YES_NO, judge_conversation
from .ranked import AB, RANKED_SYSTEM, ranked_conversation, ranked_scores

T = TypeVar("T")
RunOnEngine = Callable[[Callable[[Engine], T]], T]
Progress = Callable[[str, int, int], None]
Objective = Literal["ranking", "likelihood"]
OBJECTIVES: tuple[Objective, ...] = ("ranking", "likelihood")
Format = Literal["scalar", "ranked"]
FORMATS: tuple[Format, ...] = ("scalar", "ranked")
LABELS: dict[str, tuple[str, str]] = {"scalar": YES_NO, "ranked": AB}  # answer words per format
MIN_RANKED_PAIRS = 2


class CompileCancelled(RuntimeError):
    pass


@dataclass(frozen=True)
class LabelledExample:
    prompt: str
    response: str
    good: bool


@dataclass(frozen=True)
class CompileSettings:
    num_heads: int = 16
    shots_per_context: int = 4
    max_contexts: int = 32  # few-shot contexts averaged for the means
    max_pool: int = 64  # zero-shot queries that score each REINFORCE draw
    iterations: int = 100
    objective: Objective = "ranking"  # selection reward; see alignment.head_selection
    format: Format = "scalar"  # judge query: Yes/No about one response, or A/B between two
    samples: int = 4
    seed: int = 0
    batch_size: int = 8


def _judge_user(ex: LabelledExample, rubric: str) -> str:
    return judge_conversation(ex.prompt, ex.response, rubric)[-1]["content"]


def fewshot_context(demos: Sequence[LabelledExample], query: LabelledExample, rubric: str) -> list[Message]:
    """Labelled demos as earlier turns of the judge conversation, then the query's question."""
    msgs: list[Message] = [{"role": "system", "content": JUDGE_SYSTEM}]
    for d in demos:
        msgs.append({"role": "user", "content": _judge_user(d, rubric)})
        msgs.append({"role": "assistant", "content": YES_NO[0] if d.good else YES_NO[1]})
    msgs.append({"role": "user", "content": _judge_user(query, rubric)})
    return msgs


@dataclass(frozen=True)
class RankedPair:
    prompt: str
    chosen: str
    rejected: str

    def query(self, rubric: str, chosen_first: bool) -> list[Message]:
        """The zero-shot ranked query; the right answer is A when ``chosen_first``."""
        if chosen_first:
            return ranked_conversation(self.prompt, self.chosen, self.rejected, rubric)
        return ranked_conversation(self.prompt, self.rejected, self.chosen, rubric)


def ranked_pairs(examples: Sequence[LabelledExample]) -> list[RankedPair]:
    """Chosen/rejected pairs from good and bad examples of the same prompt: per prompt, the k-th
    good with the k-th bad, the shorter list cycled, so every example is used and a prompt gives
    max(goods, bads) pairs (a profile's ``pairs`` come back as they were given)."""
    by_prompt: dict[str, tuple[list[str], list[str]]] = {}
    for e in examples:
        by_prompt.setdefault(e.prompt, ([], []))[0 if e.good else 1].append(e.response)
    out = []
    for prompt, (good, bad) in by_prompt.items():
        if good and bad:
            out += [RankedPair(prompt, good[k % len(good)], bad[k % len(bad)]) for k in range(max(len(good), len(bad)))]
    return out


def ranked_fewshot_context(demos: Sequence[RankedPair], query: RankedPair, rubric: str,
                           query_chosen_first: bool) -> list[Message]:
    """Ranked demos as earlier turns, each answered with the better response's letter, then the
    query's question. The demos' answers alternate, starting opposite to the query's, so no
    letter is the pattern to copy."""
    msgs: list[Message] = [{"role": "system", "content": RANKED_SYSTEM}]
    for k, d in enumerate(demos):
        chosen_first = (k % 2 == 0) != query_chosen_first
        msgs.append({"role": "user", "content": d.query(rubric, chosen_first)[-1]["content"]})
        msgs.append({"role": "assistant", "content": AB[0] if chosen_first else AB[1]})
    msgs.append({"role": "user", "content": query.query(rubric, query_chosen_first)[-1]["content"]})
    return msgs


def longest_zero_shot_query(examples: Sequence[LabelledExample], rubric: str, fmt: Format) -> list[Message]:
    """The longest zero-shot query compiling ``examples`` in ``fmt`` will run (for a size check)."""
    if fmt == "ranked":
        pairs = ranked_pairs(examples)
        if pairs:
            p = max(pairs, key=lambda q: len(q.prompt) + len(q.chosen) + len(q.rejected))
            return p.query(rubric, True)
    e = max(examples, key=lambda x: len(x.prompt) + len(x.response))
    return judge_conversation(e.prompt, e.response, rubric)


def _header_metadata(blob: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    return dict(header.get("__metadata__", {}))


@dataclass
class CompiledARM:
    """What a compiled profile stores: selected heads, their few-shot means (the scoring patch) and
    their steering directions with the examples' spread along them."""

    heads: list[tuple[int, int]]  # (layer, head) patched for scoring, most useful first
    means: torch.Tensor  # [k, head_dim]
    directions: torch.Tensor  # [s, head_dim] unit vectors, one per steering head
    sigmas: torch.Tensor  # [s]
    info: dict[str, Any] = field(default_factory=dict)
    steer_heads: list[tuple[int, int]] | None = None  # (layer, head) steered in generation; None = heads

    def to_bytes(self) -> bytes:
        heads = torch.tensor(self.heads, dtype=torch.int64).reshape(-1, 2)
        steer = torch.tensor(self.steering_heads, dtype=torch.int64).reshape(-1, 2)
        return st_save({"heads": heads, "steer_heads": steer, "means": self.means.contiguous(),
                        "directions": self.directions.contiguous(), "sigmas": self.sigmas.contiguous()},
                       metadata={"info": json.dumps(self.info)})

    @property
    def steering_heads(self) -> list[tuple[int, int]]:
        return self.heads if self.steer_heads is None else self.steer_heads

    @classmethod
    def from_bytes(cls, blob: bytes) -> CompiledARM:
        t = st_load(blob)
        info = json.loads(_header_metadata(blob).get("info", "{}"))
        heads = [(int(a), int(b)) for a, b in t["heads"].tolist()]
        steer = [(int(a), int(b)) for a, b in t["steer_heads"].tolist()] if "steer_heads" in t else None
        return cls(heads, t["means"], t["directions"], t["sigmas"], info, steer)

    @property
    def format(self) -> Format:
        """The judge format the profile was compiled for (profiles compiled before the option: scalar)."""
        return "ranked" if self.info.get("format") == "ranked" else "scalar"

    def check_engine(self, engine: Engine) -> None:
        want = (self.info.get("num_layers"), self.info.get("num_heads"), self.info.get("head_dim"))
        have = (engine.num_layers, engine.num_heads, engine.head_dim)
        if want != have:
            raise ValueError(f"profile was compiled for a model with (layers, heads, head_dim)={want}; "
                             f"the served model has {have}")

    def scoring_steering(self) -> list[SteeringVector]:
        """Replace the selected heads by their few-shot means at the readout position."""
        return [SteeringVector(layer=layer, head=h, vector=self.means[i], position="last_prompt", replace=True)
                for i, (layer, h) in enumerate(self.heads)]

    def generation_steering(self, strength: float) -> list[SteeringVector]:
        """Shift the selected heads by ``strength`` standard deviations toward accepted responses
        on every generated token (0 = off)."""
        if strength == 0:
            return []
        return [SteeringVector(layer=layer, head=h, vector=self.directions[i] * self.sigmas[i], scale=strength,
                               position="generated")
                for i, (layer, h) in enumerate(self.steering_heads) if float(self.sigmas[i]) > 0]


def head_patches(means: torch.Tensor, mask: torch.Tensor) -> list[SteeringVector]:
    """Steering vectors that replace every head with ``mask`` set by its mean (``means``:
    ``[layers, heads, d]``; ``mask``: ``[layers*heads]``)."""
    n_heads = means.shape[1]
    return [SteeringVector(layer=i // n_heads, head=i % n_heads, vector=means[i // n_heads, i % n_heads],
                           position="last_prompt", replace=True)
            for i in mask.nonzero().flatten().tolist()]


def validate_examples(examples: Sequence[LabelledExample], fmt: Format = "scalar") -> None:
    goods = sum(e.good for e in examples)
    if len(examples) < 4:
        raise ValueError("an activation reward model needs at least 4 labelled examples")
    if goods == 0 or goods == len(examples):
        raise ValueError("examples need both labels (some good, some bad)")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "ranked" and len(ranked_pairs(examples)) < MIN_RANKED_PAIRS:
        raise ValueError(f"the ranked format needs at least {MIN_RANKED_PAIRS} chosen/rejected pairs "
                         "(pairs, or good and bad examples of the same prompt)")


def _balanced_order(examples: Sequence[LabelledExample], rng: random.Random) -> list[int]:
    """Indices alternating good and bad while both last, each class shuffled."""
    good = [i for i, e in enumerate(examples) if e.good]
    bad = [i for i, e in enumerate(examples) if not e.good]
    rng.shuffle(good)
    rng.shuffle(bad)
    out: list[int] = []
    while good or bad:
        for group in (good, bad):
            if group:
                out.append(group.pop())
    return out


def selection_pool(examples: Sequence[LabelledExample], order: Sequence[int], size: int) -> list[int]:
    """At most ``size`` example indices for the selection queries: whole prompts that have both
    labels first (so the ranking reward has same-prompt pairs), then the rest, in ``order``."""
    labels_of: dict[str, set[bool]] = {}
    for e in examples:
        labels_of.setdefault(e.prompt, set()).add(e.good)
    members: dict[str, list[int]] = {}
    for i in order:
        members.setdefault(examples[i].prompt, []).append(i)
    pool: list[int] = []
    for prompt, idx in members.items():
        if len(labels_of[prompt]) == 2 and len(pool) + len(idx) <= size:
            pool.extend(idx)
    taken = set(pool)
    pool.extend([i for i in order if i not in taken][: max(0, size - len(pool))])
    return pool


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def selection_reward(objective: Objective, labels: torch.Tensor,
                     prompts: Sequence[Hashable]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The REINFORCE reward of ``objective``: ``[options, n]`` P(first label) → ``[options]``.

    ``labels[i]`` says whether query i's right answer is the first label word (Yes; A), and
    ``prompts`` groups the queries whose order matters: same-prompt responses (scalar) or the two
    orders of one pair (ranked, where "ranking" then asks P(A) to be higher with the chosen
    response shown first than second — the position bias cancels in the difference)."""
    if objective == "likelihood":
        return partial(label_log_likelihood, labels=labels)
    if objective == "ranking":
        good, bad = preference_pairs(prompts, labels)
        return partial(ranking_reward, good=good, bad=bad)
    raise ValueError(f"unknown selection objective {objective!r}; use one of {', '.join(OBJECTIVES)}")


def select_heads(
    try_options: Callable[[list[list[SteeringVector]]], torch.Tensor],
    means: torch.Tensor,
    reward: Callable[[torch.Tensor], torch.Tensor],
    cfg: ReinforceConfig,
    max_heads: int,
    on_iteration: Callable[[], None] | None = None,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """REINFORCE over head masks, then the best-scoring prefix (≤ ``max_heads``) of its ranking.

    ``try_options`` maps steering options to ``[options, n]`` P(first label) for a fixed query set;
    ``reward`` maps those to one value per option (``selection_reward``); ``means`` is
    ``[layers, heads, d]``. Returns the chosen flat head indices and the probabilities without and
    with the patch.
    """
    layers, heads = means.shape[0], means.shape[1]

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        p = try_options([head_patches(means, m) for m in masks])
        if on_iteration is not None:
            on_iteration()
        return reward(p)

    theta = reinforce_head_selection(layers * heads, evaluate, cfg)
    ranked = top_heads(theta, max_heads)
    prefixes = []
    for k in range(1, len(ranked) + 1):  # one readout call tries every prefix length
        mask = torch.zeros(layers * heads)
        mask[ranked[:k]] = 1
        prefixes.append(head_patches(means, mask))
    p = try_options([[], *prefixes])
    best = int(torch.argmax(reward(p[1:])))
    return ranked[: best + 1], p[0], p[best + 1]


def _prompt_len(eng: Engine, conv: list[Message]) -> int:
    return eng.prompt_size(conv, None).plain


def _capture(eng: Engine, convs: list[list[Message]], completions: list[str] | None = None) -> torch.Tensor:
    return eng.capture_head_activations(convs, completions)


@dataclass
class _Task:
    """What the means and selection phases run, in either format: few-shot contexts whose last
    prompt token is averaged, and zero-shot queries with, per query, whether its right answer is
    the first label word and the group whose order the ranking reward compares."""

    labels: tuple[str, str]
    contexts: list[list[Message]]
    queries: list[list[Message]]
    query_labels: torch.Tensor
    query_groups: Sequence[Hashable]


def _scalar_task(examples: Sequence[LabelledExample], rubric: str, settings: CompileSettings,
                 rng: random.Random) -> _Task:
    order = _balanced_order(examples, rng)
    n_ctx = min(len(examples), settings.max_contexts)
    pool = selection_pool(examples, order, settings.max_pool)
    contexts: list[list[Message]] = []
    for c in range(n_ctx):
        q = order[c]
        others = [i for i in order if i != q]
        demos = [examples[i] for i in rng.sample(others, min(settings.shots_per_context, len(others)))]
        contexts.append(fewshot_context(demos, examples[q], rubric))
    return _Task(YES_NO, contexts, [judge_conversation(examples[i].prompt, examples[i].response, rubric) for i in pool],
                 torch.tensor([examples[i].good for i in pool]), [examples[i].prompt for i in pool])


def _ranked_task(examples: Sequence[LabelledExample], rubric: str, settings: CompileSettings,
                 rng: random.Random) -> _Task:
    pairs = ranked_pairs(examples)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    contexts: list[list[Message]] = []
    for c in range(min(len(pairs), settings.max_contexts)):
        q = order[c]
        others = [i for i in order if i != q]
        demos = [pairs[i] for i in rng.sample(others, min(settings.shots_per_context, len(others)))]
        contexts.append(ranked_fewshot_context(demos, pairs[q], rubric, query_chosen_first=c % 2 == 0))
    pool = order[: max(1, settings.max_pool // 2)]
    queries, labels, groups = [], [], []
    for i in pool:  # every pair in both orders: chosen as A (right answer A), then as B
        for chosen_first in (True, False):
            queries.append(pairs[i].query(rubric, chosen_first))
            labels.append(chosen_first)
            groups.append(i)
    return _Task(AB, contexts, queries, torch.tensor(labels), groups)


def compile_activation_rm(
    run: RunOnEngine[Any],
    examples: Sequence[LabelledExample],
    rubric: str,
    settings: CompileSettings,
    engine_shape: tuple[int, int, int, int],
    model_name: str,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> CompiledARM:
    """Run the three phases on the engine through ``run`` (which executes a call on the engine's
    thread) and return the compiled profile. ``engine_shape`` is (layers, heads, head_dim,
    max_model_len)."""
    validate_examples(examples, settings.format)
    layers, heads, head_dim, max_len = engine_shape
    rng = random.Random(settings.seed)
    task = (_ranked_task if settings.format == "ranked" else _scalar_task)(examples, rubric, settings, rng)
    labels = torch.tensor([e.good for e in examples])
    contexts = task.contexts
    n_ctx = len(contexts)
    dir_batches = _batches(len(examples), settings.batch_size)
    ctx_batches = _batches(n_ctx, settings.batch_size)
    total = len(ctx_batches) + settings.iterations + len(dir_batches) + 1
    step = 0

    def tick(phase: str) -> None:
        nonlocal step
        if cancelled is not None and cancelled():
            raise CompileCancelled("compilation cancelled")
        step += 1
        if progress is not None:
            progress(phase, step, total)

    started = time.perf_counter()
    # 1. few-shot means at the readout position
    for c in range(n_ctx):  # drop demos until the context fits the model
        while run(partial(_prompt_len, conv=contexts[c])) >= max_len - 1 and len(contexts[c]) > 2:
            contexts[c] = contexts[c][:1] + contexts[c][3:]
    total_means = torch.zeros(layers, heads, head_dim)
    for b in ctx_batches:
        batch = [contexts[i] for i in b]
        total_means += run(partial(_capture, convs=batch)).sum(0)
        tick("means")
    means = total_means / n_ctx

    # 2. REINFORCE head selection on zero-shot queries, prefix computed once
    queries, label_words = task.queries, task.labels

    def open_readout(eng: Engine) -> Readout:
        return eng.open_readout(queries)

    readout = run(open_readout)
    pool_labels, pool_groups = task.query_labels, task.query_groups
    reward = selection_reward(settings.objective, pool_labels, pool_groups)
    try:
        def try_options(options: list[list[SteeringVector]]) -> torch.Tensor:
            return run(lambda _eng: readout.label_probability(options, label_words))  # type: ignore[no-any-return]

        cfg = ReinforceConfig(iterations=settings.iterations, samples=settings.samples, seed=settings.seed)
        chosen, zero_shot, patched = select_heads(try_options, means, reward, cfg, settings.num_heads,
                                                  lambda: tick("selection"))
    finally:
        run(lambda _eng: readout.close())
    tick("selection")
    head_list = [(i // heads, i % heads) for i in chosen]

    # 3. steering heads and directions at the end of each response
    all_acts = []
    for b in dir_batches:
        convs = [[{"role": "user", "content": examples[i].prompt}] for i in b]
        completions = [examples[i].response for i in b]
        acts = run(partial(_capture, convs=convs, completions=completions))
        all_acts.append(acts.reshape(len(b), layers * heads, head_dim))
        tick("directions")
    acts = torch.cat(all_acts)
    units, spreads = mass_mean_directions(acts, labels)
    steer_idx = top_heads(separation(acts, labels, units, spreads), settings.num_heads)
    steer_list = [(i // heads, i % heads) for i in steer_idx]
    idx = torch.tensor([layer * heads + h for layer, h in head_list], dtype=torch.long)

    def accuracy(p: torch.Tensor) -> float:
        return float(((p > 0.5) == pool_labels).float().mean())

    good, bad = preference_pairs(pool_groups, pool_labels)

    info = {
        "model": model_name, "num_layers": layers, "num_heads": heads, "head_dim": head_dim,
        "format": settings.format, "labels": list(label_words),
        "examples": len(examples), "contexts": n_ctx, "pool": len(queries), "iterations": settings.iterations,
        "objective": settings.objective, "pairs": len(good),
        "zero_shot_accuracy": accuracy(zero_shot), "patched_accuracy": accuracy(patched),
        "zero_shot_pair_accuracy": float(pair_accuracy(zero_shot, good, bad)),
        "patched_pair_accuracy": float(pair_accuracy(patched, good, bad)),
        "zero_shot_reward": float(reward(zero_shot.unsqueeze(0))[0]),
        "patched_reward": float(reward(patched.unsqueeze(0))[0]),
        "zero_shot_log_likelihood": float(label_log_likelihood(zero_shot.unsqueeze(0), pool_labels)[0]),
        "patched_log_likelihood": float(label_log_likelihood(patched.unsqueeze(0), pool_labels)[0]),
        "compile_s": round(time.perf_counter() - started, 2), "compiled_at": time.time(),
    }
    return CompiledARM(head_list, means[idx // heads, idx % heads].clone(), units[steer_idx].clone(),
                       spreads[steer_idx].clone(), info, steer_list)


class ActivationRMScorer:
    """``method="activation_rm"``: the profile's judge format with its heads patched — P(Yes) per
    response (scalar), or each response's mean win probability over A/B comparisons in both
    orders (ranked, ``ranked.ranked_scores``)."""

    name = "activation_rm"

    def score(self, engine: Engine, prompt: str, responses: Sequence[str], rubric: str,
              compiled: CompiledARM | None = None) -> list[float]:
        if compiled is None:
            raise ValueError("activation_rm scoring needs a profile with compiled activations")
        steering = compiled.scoring_steering()
        if compiled.format == "ranked":
            return ranked_scores(engine, prompt, responses, rubric, steering)
        return engine.label_probability([judge_conversation(prompt, r, rubric) for r in responses], YES_NO,
                                        steering)
