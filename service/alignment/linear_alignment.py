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

Sampling (``LinearAlignmentConfig.sampling``). The aligned logits are always ``l`` inside q's
nucleus and ``-inf`` outside; what differs is the distribution a *sampled* request draws from:

* ``"request"`` (default): the request's own temperature, top-k and top-p applied to the aligned
  logits, exactly as for an unaligned request; ``plausibility_temperature`` only shapes the mask.
* ``"authors"``: as in the released code, one temperature ``T = plausibility_temperature``
  (officially 0.5) divides both the principle logits (for the mask) and the combined logits, and
  the token is drawn from the masked ``softmax(l / T)``; the request's temperature only chooses
  greedy (0) or sampled, its top-k/top-p are not applied.

Greedy requests take the argmax of the aligned logits under both (dividing by T does not move it).
The authors fall back to q's nucleus when the masked ``softmax(l/T)`` sums to 0; here the softmax is
taken after masking, so that can only happen for a row with no finite aligned logit (``-inf``/NaN
inputs): such a row, under either setting, draws from ``l_in`` restricted to the nucleus instead.

All functions are pure torch on ``[batch, vocab]`` float tensors; no I/O, no model. Per-row settings
travel as tensors (``AlignmentBatch``), built once per batch composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .device_tensor import device_tensor
from .sampling import nucleus_mask

__all__ = ["AlignedStep", "AlignmentBatch", "LinearAlignmentConfig", "adaptive_strength", "combine_logits",
           "linear_alignment_step", "nucleus_mask"]


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
    sampling: Literal["request", "authors"] = "request"  # see the module docstring

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
        if self.sampling not in ("request", "authors"):
            raise ValueError("sampling must be 'request' or 'authors'")


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


@dataclass(frozen=True)
class AlignmentBatch:
    """Per-row Linear Alignment settings of one batch composition, as device tensors."""

    size: int
    strength: torch.Tensor  # [batch] float32
    adaptive: torch.Tensor  # [batch] bool
    kl_budget: torch.Tensor
    max_strength: torch.Tensor
    top_p: torch.Tensor  # plausibility nucleus
    temperature: torch.Tensor  # plausibility temperature
    any_adaptive: bool  # host flag: skip the variance pass when no row is adaptive

    @classmethod
    def build(cls, configs: Sequence[LinearAlignmentConfig], device: torch.device | str) -> AlignmentBatch:
        def col(values: list[float]) -> torch.Tensor:
            return device_tensor(values, torch.float32, device)

        return cls(
            size=len(configs),
            strength=col([c.strength for c in configs]),
            adaptive=device_tensor([c.adaptive for c in configs], torch.bool, device),
            kl_budget=col([c.kl_budget for c in configs]),
            max_strength=col([c.max_strength for c in configs]),
            top_p=col([c.plausibility_top_p for c in configs]),
            temperature=col([c.plausibility_temperature for c in configs]),
            any_adaptive=any(c.adaptive for c in configs),
        )


@dataclass
class AlignedStep:
    logits: torch.Tensor  # [batch, vocab] float32, -inf outside the plausibility nucleus
    strength: torch.Tensor  # [batch] the r actually used per row


def linear_alignment_step(
    l_in: torch.Tensor, l_out: torch.Tensor, la: AlignmentBatch | Sequence[LinearAlignmentConfig],
    sync_free: bool | None = None,
) -> AlignedStep:
    """Apply Linear Alignment to a batch of rows, each with its own settings. ``sync_free`` (default:
    on accelerators) never reads the device; on CPU reading is free and skips work."""
    params = la if isinstance(la, AlignmentBatch) else AlignmentBatch.build(la, l_in.device)
    if l_in.shape != l_out.shape or l_in.shape[0] != params.size:
        raise ValueError("l_in, l_out and the settings must agree on batch size")
    strength = params.strength
    if params.any_adaptive:
        r_adapt = adaptive_strength(l_in, l_out, params.kl_budget, params.max_strength)
        strength = torch.where(params.adaptive, r_adapt, params.strength)
    if sync_free is None:
        sync_free = l_in.device.type != "cpu"
    mask = nucleus_mask(l_in, params.top_p, params.temperature, sync_free=sync_free)
    aligned = combine_logits(l_in, l_out, strength).masked_fill_(~mask, float("-inf"))
    # A row with no finite aligned logit (its amax is -inf or NaN) draws from q's nucleus instead.
    dead = ~(aligned.amax(dim=-1, keepdim=True) > float("-inf"))
    if sync_free or bool(dead.any()):
        aligned = torch.where(dead, l_in.float().masked_fill(~mask, float("-inf")), aligned)
    return AlignedStep(logits=aligned, strength=strength)
