"""Train the shipped English reward model: a Bradley-Terry head on the base model's last hidden state.

The backbone stays frozen: features are the final (normed) hidden state at the last token of the
chat-templated (prompt, response) conversation — exactly what ``Qwen2ForSequenceClassification``
feeds its ``score`` layer, read through the serving runner itself so training and serving see the
same numbers. The head ``w`` minimises the Bradley-Terry loss ``-log sigmoid(w.(h_chosen -
h_rejected))`` plus an L2 penalty chosen by 5-fold cross-validation (folds by prompt), in float64
with L-BFGS on standardised features; the scale is folded back so ``reward = w . h``.

Data: ``bench/data/preference_pairs_train.json`` (hand-written English pairs) plus one
*relevance* pair per prompt built from it (its own chosen answer over another prompt's chosen
answer). Held out: the English side of ``bench/data/cross_lingual_pairs.json``, never trained on.

    python bench/train_reward_head.py            # ~3 min on 2 CPU cores; writes service/reward/heads/
    python bench/train_reward_head.py --dry-run  # report accuracies, write nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from service.config import default_home
from service.models.provision import resolve_model
from service.reward.embedded_rm import SHIPPED_HEAD, build_rm_folder, save_head
from service.reward.reward_model import TransformersRewardModel, rm_conversation

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "bench" / "data" / "preference_pairs_train.json"
HELD_OUT = ROOT / "bench" / "data" / "cross_lingual_pairs.json"
LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def load_pairs() -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:
    """(category, prompt, chosen, rejected) for training (with relevance augmentation) and held out."""
    rows = [tuple(r) for r in json.loads(TRAIN.read_text())["pairs"]]
    train: list[tuple[str, str, str, str]] = [(c, p, ch, rj) for c, p, ch, rj in rows]
    n = len(rows)
    for i, (_, p, ch, _) in enumerate(rows):  # an answer to another question is worse than the answer
        j = (i + n // 2) % n
        train.append(("relevance_aug", p, ch, rows[j][2]))
    held = [(it["category"], *it["en"]) for it in json.loads(HELD_OUT.read_text())["items"]]
    return train, held


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


def cross_validate(diffs: torch.Tensor, groups: list[str], folds: int = 5) -> dict[float, float]:
    prompts = sorted(set(groups))
    fold_of = {p: i % folds for i, p in enumerate(prompts)}
    out = {}
    for lam in LAMBDAS:
        correct = 0.0
        for f in range(folds):
            test = torch.tensor([fold_of[g] == f for g in groups])
            w = fit_bt(diffs[~test], lam)
            correct += float(((diffs[test] @ w) > 0).double().sum())
        out[lam] = correct / len(groups)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="feature dtype (float32 is what the CPU server uses)")
    ap.add_argument("--dry-run", action="store_true", help="report accuracies, do not write the head")
    args = ap.parse_args()

    t0 = time.perf_counter()
    base = Path(resolve_model(SHIPPED_HEAD.base_model, default_home()))
    train, held = load_pairs()
    with tempfile.TemporaryDirectory() as tmp:
        zero = Path(tmp) / "zero.safetensors"
        hidden = int(json.loads((base / "config.json").read_text())["hidden_size"])
        save_head(torch.zeros(hidden), zero, {})
        folder = build_rm_folder(base, zero, Path(tmp) / "rm")
        rm = TransformersRewardModel(str(folder), device=args.device, dtype=args.dtype, max_length=2048)
        device = (torch.cuda.get_device_name(0) if rm.device.type == "cuda"
                  else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
        print(f"{len(train)} training pairs ({len(train) // 2} written + relevance), {len(held)} held out; "
              f"device {device}", flush=True)

        def feats(rows: list[tuple[str, str, str, str]], label: str) -> tuple[torch.Tensor, torch.Tensor]:
            t = time.perf_counter()
            chosen = rm.features([rm_conversation(p, c) for _, p, c, _ in rows])
            rejected = rm.features([rm_conversation(p, r) for _, p, _, r in rows])
            print(f"  features {label}: {2 * len(rows)} conversations in {time.perf_counter() - t:.0f}s", flush=True)
            return chosen, rejected

        tr_c, tr_r = feats(train, "train")
        he_c, he_r = feats(held, "held-out")
        rm.close()

    both = torch.cat([tr_c, tr_r])
    sigma = both.std(0).clamp_min(1e-6)  # differences cancel the mean; only the scale matters
    d_train = (tr_c - tr_r) / sigma
    d_held = (he_c - he_r) / sigma
    cv = cross_validate(d_train, [p for _, p, _, _ in train])
    lam = max(LAMBDAS, key=lambda v: (cv[v], v))  # ties: the stronger penalty
    w_std = fit_bt(d_train, lam)
    weight = w_std / sigma  # reward = w . h (the standardisation's offset is a constant per model)
    by_cat: dict[str, list[float]] = {}
    for (cat, *_), d in zip(held, d_held, strict=True):
        by_cat.setdefault(cat, []).append(float((d @ w_std) > 0))
    meta = {
        "name": SHIPPED_HEAD.name, "base_model": SHIPPED_HEAD.base_model, "kind": "Bradley-Terry linear head on the "
        "frozen final hidden state (last token of the chat-templated conversation)",
        "training_data": {"file": str(TRAIN.relative_to(ROOT)),
                          "sha256": hashlib.sha256(TRAIN.read_bytes()).hexdigest(),
                          "pairs_written": len(train) // 2, "pairs_with_relevance_augmentation": len(train),
                          "note": "hand-written by the alignserve authors; no public preference corpus was reachable"},
        "l2_penalty": lam, "cv_accuracy_by_penalty": {str(k): round(v, 4) for k, v in cv.items()},
        "train_accuracy": round(accuracy(d_train, w_std), 4),
        "held_out": {"file": str(HELD_OUT.relative_to(ROOT)), "language": "en", "pairs": len(held),
                     "accuracy": round(accuracy(d_held, w_std), 4),
                     "accuracy_by_category": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_cat.items())}},
        "feature_dtype": args.dtype, "device": device,
        "command": "python bench/train_reward_head.py " + " ".join(sys.argv[1:]),
        "trained_at": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps({k: meta[k] for k in ("l2_penalty", "cv_accuracy_by_penalty", "train_accuracy", "held_out")},
                     indent=2))
    if not args.dry_run:
        save_head(weight, SHIPPED_HEAD.path, meta)
        print(f"wrote {SHIPPED_HEAD.path} and {SHIPPED_HEAD.meta_path}")


if __name__ == "__main__":
    main()
