"""Train the shipped English reward model: a Bradley-Terry head on the base model's last hidden state.

The backbone stays frozen: features are the final (normed) hidden state at the last token of the
chat-templated (prompt, response) conversation — exactly what ``Qwen2ForSequenceClassification``
feeds its ``score`` layer, read through the serving runner itself so training and serving see the
same numbers. The head ``w`` minimises the Bradley-Terry loss ``-log sigmoid(w.(h_chosen -
h_rejected))`` plus an L2 penalty chosen by 5-fold cross-validation (folds by prompt), in float64
with L-BFGS on standardised features; the scale is folded back so ``reward = w . h``.

Data (``--train-set``):
- ``legacy`` (default, what the shipped head was trained on): ``bench/data/preference_pairs_train.json``
  (92 hand-written English pairs); held out: the English side of ``bench/data/cross_lingual_pairs.json``.
- ``multilingual``: the English side of ``bench/data/preference_pairs_multilingual.json`` (152 train
  pairs, a superset of the 92; 72 held-out test pairs, a superset of the 36).
Either way one *relevance* pair per prompt is added (its own chosen answer over another prompt's
chosen answer). The same recipe trains the target-language heads of ``bench/cross_lingual.py --replicate``.

    python -m bench.train_reward_head            # ~4 min on 2 CPU cores; writes service/reward/heads/
    python -m bench.train_reward_head --dry-run  # report accuracies, write nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from service.config import default_home
from service.models.provision import resolve_model
from service.reward.embedded_rm import SHIPPED_HEAD, build_rm_folder, save_head
from service.reward.reward_model import TransformersRewardModel, rm_conversation

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "bench" / "data" / "preference_pairs_train.json"
HELD_OUT = ROOT / "bench" / "data" / "cross_lingual_pairs.json"
MULTILINGUAL = ROOT / "bench" / "data" / "preference_pairs_multilingual.json"
LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)

Pair = tuple[str, str, str, str]  # (category, prompt, chosen, rejected)


def with_relevance(rows: Sequence[Pair]) -> list[Pair]:
    """The rows plus one relevance pair per prompt: an answer to another question is worse than the answer.
    Index-based, so translated copies of the same rows get the translated copies of the same pairs."""
    n = len(rows)
    out = list(rows)
    for i, (_, p, ch, _) in enumerate(rows):
        out.append(("relevance_aug", p, ch, rows[(i + n // 2) % n][2]))
    return out


def load_pairs() -> tuple[list[Pair], list[Pair]]:
    """Legacy set: (category, prompt, chosen, rejected) for training (with relevance augmentation) and held out."""
    rows: list[Pair] = [(c, p, ch, rj) for c, p, ch, rj in json.loads(TRAIN.read_text())["pairs"]]
    held: list[Pair] = [(it["category"], *it["en"]) for it in json.loads(HELD_OUT.read_text())["items"]]
    return with_relevance(rows), held


def load_multilingual(lang: str, split: str, path: Path = MULTILINGUAL) -> list[Pair]:
    """One language's side of one split ("train" or "test") of the multilingual set, without augmentation."""
    return [(it["category"], *it[lang]) for it in json.loads(path.read_text())[split]]


def fit_bt(diffs: torch.Tensor, lam: float) -> torch.Tensor:
    """Minimise mean softplus(-d.w) + lam/2 |w|^2 over standardised difference vectors (float64)."""
    w = torch.zeros(diffs.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(diffs @ w)).mean() + 0.5 * lam * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def accuracy(diffs: torch.Tensor, w: torch.Tensor) -> float:
    return float(((diffs @ w) > 0).double().mean())


def cross_validate(diffs: torch.Tensor, groups: list[str], folds: int = 5,
                   lambdas: Sequence[float] = LAMBDAS) -> dict[float, float]:
    prompts = sorted(set(groups))
    fold_of = {p: i % folds for i, p in enumerate(prompts)}
    out = {}
    for lam in lambdas:
        correct = 0.0
        for f in range(folds):
            test = torch.tensor([fold_of[g] == f for g in groups])
            w = fit_bt(diffs[~test], lam)
            correct += float(((diffs[test] @ w) > 0).double().sum())
        out[lam] = correct / len(groups)
    return out


@dataclass(frozen=True)
class BTHead:
    """A fitted head: ``w_std`` on features divided by ``sigma``; ``weight`` is the same head on raw features."""

    w_std: torch.Tensor
    sigma: torch.Tensor
    lam: float
    cv: dict[float, float]

    @property
    def weight(self) -> torch.Tensor:
        return self.w_std / self.sigma  # reward = weight . h (the standardisation's offset cancels in pairs)

    def margins(self, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        """reward(chosen) - reward(rejected) per pair."""
        return ((chosen - rejected) / self.sigma) @ self.w_std


def train_head(chosen: torch.Tensor, rejected: torch.Tensor, groups: list[str], lam: float | None = None) -> BTHead:
    """The recipe: standardise by the training features' spread, pick the L2 penalty by 5-fold CV over
    ``LAMBDAS`` (folds by prompt; ties go to the stronger penalty) unless ``lam`` is given, fit."""
    sigma = torch.cat([chosen, rejected]).std(0).clamp_min(1e-6)  # differences cancel the mean
    diffs = (chosen - rejected) / sigma
    cv = cross_validate(diffs, groups) if lam is None else {}
    if lam is None:
        lam = max(LAMBDAS, key=lambda v: (cv[v], v))
    return BTHead(fit_bt(diffs, lam), sigma, lam, cv)


def device_name(rm: TransformersRewardModel) -> str:
    return (torch.cuda.get_device_name(0) if rm.device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")


@contextmanager
def feature_runner(device: str, dtype: str) -> Iterator[TransformersRewardModel]:
    """The serving runner on the embedded model with a zero head: ``features`` is what any head reads."""
    base = Path(resolve_model(SHIPPED_HEAD.base_model, default_home()))
    with tempfile.TemporaryDirectory() as tmp:
        zero = Path(tmp) / "zero.safetensors"
        hidden = int(json.loads((base / "config.json").read_text())["hidden_size"])
        save_head(torch.zeros(hidden), zero, {})
        folder = build_rm_folder(base, zero, Path(tmp) / "rm")
        rm = TransformersRewardModel(str(folder), device=device, dtype=dtype, max_length=2048)
        try:
            yield rm
        finally:
            rm.close()


class FeatureCache:
    """Features per conversation, computed once and kept on disk (one file per language), keyed by the
    conversation text, the base model's config and weights' sizes, and the feature dtype."""

    def __init__(self, rm: TransformersRewardModel, dtype: str, name: str, folder: Path | None = None) -> None:
        base = Path(resolve_model(SHIPPED_HEAD.base_model, default_home()))
        ident = json.dumps([(base / "config.json").read_text(),
                            sorted((p.name, p.stat().st_size) for p in base.glob("*.safetensors")), dtype])
        tag = hashlib.sha256(ident.encode()).hexdigest()[:12]
        self.path = (folder or default_home() / "cache" / "rm_features") / f"{name}-{tag}.pt"
        self.rm = rm
        saved = torch.load(self.path) if self.path.is_file() else {"features": {}, "seconds": 0.0}
        self.store: dict[str, torch.Tensor] = saved["features"]
        self.seconds = float(saved["seconds"])  # model time spent filling this cache, over all runs
        self.computed = 0

    @staticmethod
    def key(prompt: str, response: str) -> str:
        return hashlib.sha256(json.dumps([prompt, response], ensure_ascii=False).encode()).hexdigest()

    def features(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """``[n, hidden]`` float64 for (prompt, response) pairs; only the unseen ones run the model."""
        keys = [self.key(p, r) for p, r in pairs]
        todo = sorted({k: (p, r) for k, (p, r) in zip(keys, pairs, strict=True) if k not in self.store}.items())
        if todo:
            t = time.perf_counter()
            feats = self.rm.features([rm_conversation(p, r) for _, (p, r) in todo])
            self.store.update({k: f.clone() for (k, _), f in zip(todo, feats, strict=True)})
            self.computed += len(todo)
            self.seconds += time.perf_counter() - t
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"features": self.store, "seconds": self.seconds}, self.path)
        return torch.stack([self.store[k] for k in keys])

    def pair_features(self, rows: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        both = self.features([(p, c) for _, p, c, _ in rows] + [(p, r) for _, p, _, r in rows])
        return both[:len(rows)], both[len(rows):]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="feature dtype (float32 is what the CPU server uses)")
    ap.add_argument("--train-set", choices=("legacy", "multilingual"), default="legacy")
    ap.add_argument("--dry-run", action="store_true", help="report accuracies, do not write the head")
    args = ap.parse_args()

    t0 = time.perf_counter()
    if args.train_set == "legacy":
        train, held = load_pairs()
        train_file, held_file = TRAIN, HELD_OUT
    else:
        train, held = with_relevance(load_multilingual("en", "train")), load_multilingual("en", "test")
        train_file = held_file = MULTILINGUAL
    with feature_runner(args.device, args.dtype) as rm:
        device = device_name(rm)
        print(f"{len(train)} training pairs ({len(train) // 2} written + relevance), {len(held)} held out; "
              f"device {device}", flush=True)
        cache = FeatureCache(rm, args.dtype, "en")
        t = time.perf_counter()
        tr_c, tr_r = cache.pair_features(train)
        he_c, he_r = cache.pair_features(held)
        print(f"  features: {cache.computed} conversations computed in {time.perf_counter() - t:.0f}s", flush=True)

    head = train_head(tr_c, tr_r, [p for _, p, _, _ in train])
    d_train = (tr_c - tr_r) / head.sigma
    d_held = (he_c - he_r) / head.sigma
    by_cat: dict[str, list[float]] = {}
    for (cat, *_), d in zip(held, d_held, strict=True):
        by_cat.setdefault(cat, []).append(float((d @ head.w_std) > 0))
    meta = {
        "name": SHIPPED_HEAD.name, "base_model": SHIPPED_HEAD.base_model, "kind": "Bradley-Terry linear head on the "
        "frozen final hidden state (last token of the chat-templated conversation)",
        "training_data": {"file": str(train_file.relative_to(ROOT)),
                          "sha256": hashlib.sha256(train_file.read_bytes()).hexdigest(),
                          "split": "pairs" if args.train_set == "legacy" else "train (en)",
                          "pairs_written": len(train) // 2, "pairs_with_relevance_augmentation": len(train),
                          "note": "hand-written by the alignserve authors; no public preference corpus was reachable"},
        "l2_penalty": head.lam, "cv_accuracy_by_penalty": {str(k): round(v, 4) for k, v in head.cv.items()},
        "train_accuracy": round(accuracy(d_train, head.w_std), 4),
        "held_out": {"file": str(held_file.relative_to(ROOT)), "language": "en", "pairs": len(held),
                     "accuracy": round(accuracy(d_held, head.w_std), 4),
                     "accuracy_by_category": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_cat.items())}},
        "feature_dtype": args.dtype, "device": device,
        "command": ("python -m bench.train_reward_head " + " ".join(sys.argv[1:])).strip(),
        "trained_at": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps({k: meta[k] for k in ("l2_penalty", "cv_accuracy_by_penalty", "train_accuracy", "held_out")},
                     indent=2))
    if not args.dry_run:
        save_head(head.weight, SHIPPED_HEAD.path, meta)
        print(f"wrote {SHIPPED_HEAD.path} and {SHIPPED_HEAD.meta_path}")


if __name__ == "__main__":
    main()
