"""Linear Alignment (Gao et al., ICML 2024, arXiv:2401.11458) — the per-step logit transform.

The method aligns a decoding step in closed form. Self-contrastive decoding estimates the
preference direction as the difference between the model's next-token logits *with* the
preference principle in context (``l_in``) and *without* it (``l_out``); the aligned logits take
a step of size ``r`` along it, starting from the principle-conditioned logits::

    l = l_in + r * (l_in - l_out)                     (authors' code: l_in*(r+1) - l_out*r)

A plausibility constraint then keeps only tokens inside the top-p nucleus of
``softmax(l_in / T_mask)`` (defaults T_mask=0.5, p=0.8 as in the released scripts), so the step can
re-rank plausible tokens but never promote implausible ones.

Step size. The released code uses a fixed ratio ``r`` (default 3). The paper derives the step
from a divergence constraint; we offer that as ``adaptive``: choose ``r_t`` per token so that the
*second-order* KL between the aligned and the principle-conditioned distribution equals a budget
``eps`` (nats per token). For logits ``l_in + r*d`` the Fisher metric of a softmax gives
``KL ≈ r² · Var_q(d) / 2`` with ``q = softmax(l_in)``, hence ``r_t = sqrt(2·eps / Var_q(d))``,
clipped to ``[0, max_strength]``. Where the two contexts agree (Var→0) the step is capped; where
they disagree strongly the step shrinks — a trust region, as the paper's derivation intends.

All functions are pure torch on ``[batch, vocab]`` float tensors; no I/O, no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class LinearAlignmentConfig:
    """Per-request Linear Alignment settings. ``strength`` is the paper's ratio ``r``."""

    principle: str
    strength: float = 3.0
    adaptive: bool = False
    kl_budget: float = 0.1
    max_strength: float = 10.0
    plausibility_top_p: float = 0.8
    plausibility_temperature: float = 0.5
    placement: Literal["system", "user"] = "system"  # where the principle enters the context

    def __post_init__(self) -> None:
        if not self.principle.strip():
            raise ValueError("principle must not be empty")
        if not 0.0 <= self.strength <= 100.0:
            raise ValueError("strength must be within [0, 100]")
        if self.kl_budget <= 0.0:
            raise ValueError("kl_budget must be > 0")
        if self.max_strength < 0.0:
            raise ValueError("max_strength must be >= 0")
        if not 0.0 < self.plausibility_top_p <= 1.0:
            raise ValueError("plausibility_top_p must be within (0, 1]")
        if self.plausibility_temperature <= 0.0:
            raise ValueError("plausibility_temperature must be > 0")


def combine_logits(l_in: torch.Tensor, l_out: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """``l_in + r (l_in - l_out)`` row-wise; ``strength`` has shape ``[batch]``. Computed in float32."""
    l_in32, l_out32 = l_in.float(), l_out.float()
    return l_in32 + strength.float().unsqueeze(-1) * (l_in32 - l_out32)


def adaptive_strength(
    l_in: torch.Tensor, l_out: torch.Tensor, kl_budget: torch.Tensor, max_strength: torch.Tensor
) -> torch.Tensor:
    """Per-row step ``r_t = sqrt(2 eps / Var_q(l_in - l_out))`` clipped to ``[0, max_strength]``."""
    l_in32 = l_in.float()
    d = l_in32 - l_out.float()
    q = torch.softmax(l_in32, dim=-1)
    mean = (q * d).sum(-1)
    var = ((q * d * d).sum(-1) - mean * mean).clamp_min(0.0)
    r = torch.sqrt(2.0 * kl_budget.float() / var.clamp_min(1e-12))
    return torch.minimum(r, max_strength.float())


def nucleus_mask(logits: torch.Tensor, top_p: torch.Tensor, temperature: torch.Tensor,
                 fast_k: int = 64) -> torch.Tensor:
    """Boolean mask of the top-p nucleus of ``softmax(logits / T)`` per row.

    A token is kept when the probability mass strictly before it (in descending order) is below
    ``top_p``; the most likely token is always kept. The nucleus is read from the ``fast_k`` most
    likely tokens when they already hold ``top_p`` of the mass in every row (the usual case: a
    full-vocabulary sort per decoding step is the expensive part), else from a full sort; both
    paths give the same mask.
    """
    probs = torch.softmax(logits.float() / temperature.float().unsqueeze(-1), dim=-1)
    p = top_p.float().unsqueeze(-1)
    k = min(fast_k, probs.shape[-1])
    top_probs, order = probs.topk(k, dim=-1)
    covered = top_probs.sum(-1, keepdim=True) >= p
    if not bool(covered.all()):
        top_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = top_probs.cumsum(-1) - top_probs
    keep_sorted = mass_before < p
    keep_sorted[..., 0] = True
    mask = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    mask.scatter_(-1, order, keep_sorted)
    return mask


@dataclass
class AlignedStep:
    logits: torch.Tensor  # [batch, vocab] float32, -inf outside the plausibility nucleus
    strength: torch.Tensor  # [batch] the r actually used per row


def linear_alignment_step(
    l_in: torch.Tensor, l_out: torch.Tensor, configs: list[LinearAlignmentConfig]
) -> AlignedStep:
    """Apply Linear Alignment to a batch of rows, each with its own settings."""
    if l_in.shape != l_out.shape or l_in.shape[0] != len(configs):
        raise ValueError("l_in, l_out and configs must agree on batch size")
    dev = l_in.device

    def col(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=dev)

    fixed = col([c.strength for c in configs])
    strength = fixed
    if any(c.adaptive for c in configs):  # decided on the host: no device sync per step
        adaptive = torch.tensor([c.adaptive for c in configs], device=dev)
        r_adapt = adaptive_strength(
            l_in, l_out, col([c.kl_budget for c in configs]), col([c.max_strength for c in configs])
        )
        strength = torch.where(adaptive, r_adapt, fixed)
    combined = combine_logits(l_in, l_out, strength)
    mask = nucleus_mask(
        l_in, col([c.plausibility_top_p for c in configs]), col([c.plausibility_temperature for c in configs])
    )
    return AlignedStep(logits=combined.masked_fill(~mask, float("-inf")), strength=strength)
