"""Attention-head selection and steering directions for Activation Reward Models (pure torch).

Activation RMs (Chai et al., 2025) keep a small set of heads whose few-shot mean activations,
patched in at the readout position of a zero-shot query, make the model's Yes/No answer agree
with the labelled examples. The set is found as in Multimodal Task Vectors (Huang et al., 2024):
REINFORCE on independent Bernoulli variables, one per head, whose reward is how well the patched
model predicts the labels; the most probable heads are kept.

For generation, a compiled profile also steers as Inference-Time Intervention does (Li et al.,
2023): the heads whose activations best separate accepted from rejected responses are shifted
along the direction from the rejected mean to the accepted mean, in units of the examples'
spread along it (the mass-mean shift).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ReinforceConfig:
    iterations: int = 40
    samples: int = 4  # masks drawn per iteration; their mean reward is the baseline
    lr: float = 0.5
    init_prob: float = 0.2  # start by patching few heads: a patch of everything is far off-task
    seed: int = 0


def reinforce_head_selection(
    n_heads: int,
    evaluate: Callable[[torch.Tensor], torch.Tensor],
    cfg: ReinforceConfig,
    on_iteration: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """Logits of the per-head Bernoulli policy after ``cfg.iterations`` REINFORCE steps.

    ``evaluate(masks)`` takes ``[samples, n_heads]`` 0/1 masks (1 = patch that head) and returns
    one reward per mask. The gradient of log Bernoulli(m | sigmoid(theta)) is ``m - p``; rewards are
    centred on the mean of the draw (a baseline) and scaled by its spread, so ``lr`` is in units of
    standard deviations regardless of the reward's scale.
    """
    if n_heads < 1 or cfg.samples < 2:
        raise ValueError("need at least one head and two samples per iteration")
    gen = torch.Generator().manual_seed(cfg.seed)
    p0 = min(max(cfg.init_prob, 1e-3), 1 - 1e-3)
    theta = torch.full((n_heads,), float(torch.logit(torch.tensor(p0))), dtype=torch.float64)
    for it in range(cfg.iterations):
        p = torch.sigmoid(theta)
        masks = torch.bernoulli(p.expand(cfg.samples, n_heads), generator=gen)
        rewards = evaluate(masks.float()).to(torch.float64)
        if rewards.shape != (cfg.samples,):
            raise ValueError(f"evaluate returned shape {tuple(rewards.shape)}, expected ({cfg.samples},)")
        adv = rewards - rewards.mean()
        spread = adv.std()
        if spread > 1e-12:
            theta += cfg.lr * ((adv / spread).unsqueeze(1) * (masks - p)).mean(0)
        if on_iteration is not None:
            on_iteration(it, float(rewards.mean()))
    return theta


def top_heads(theta: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` heads most likely under the learnt policy, best first."""
    k = max(0, min(k, int(theta.numel())))
    return [int(i) for i in torch.argsort(theta, descending=True, stable=True)[:k]]


def label_log_likelihood(p_yes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of the correct answer per row of ``p_yes`` (``[options, n]``)."""
    p = p_yes.clamp(1e-6, 1 - 1e-6).to(torch.float64)
    y = labels.to(torch.float64)
    return (y * p.log() + (1 - y) * (1 - p).log()).mean(-1)


def mass_mean_directions(acts: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit direction (accepted mean − rejected mean) and the examples' standard deviation along it.

    ``acts``: ``[n, k, d]`` activations of ``k`` heads; ``labels``: ``[n]`` bool. Returns
    ``([k, d], [k])``. A head whose class means coincide gets a zero direction.
    """
    y = labels.bool()
    if not bool(y.any()) or bool(y.all()):
        raise ValueError("need examples of both labels")
    a = acts.to(torch.float64)
    diff = a[y].mean(0) - a[~y].mean(0)
    norm = diff.norm(dim=-1, keepdim=True)
    unit = torch.where(norm > 1e-12, diff / norm.clamp_min(1e-12), torch.zeros_like(diff))
    proj = torch.einsum("nkd,kd->nk", a, unit)
    return unit.float(), proj.std(0, unbiased=False).float()


def separation(acts: torch.Tensor, labels: torch.Tensor, unit: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per head, the gap between the class means along ``unit`` in units of ``sigma`` (``[k]``)."""
    y = labels.bool()
    proj = torch.einsum("nkd,kd->nk", acts.to(torch.float64), unit.to(torch.float64))
    gap = proj[y].mean(0) - proj[~y].mean(0)
    return (gap / sigma.to(torch.float64).clamp_min(1e-12)).float()
