"""Token selection from (possibly aligned) logits: greedy, temperature, top-k, top-p, seeded.

One function per transform, as in HF's ``logits_process.py`` and vLLM's ``v1/sample``; rows that
are entirely ``-inf`` never occur because every transform keeps at least the best token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Below this, logits / T overflows float32 for ordinary logit gaps; such a T means "greedy" anyway.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0 (or below MIN_TEMPERATURE) = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # benchmarks: decode exactly max_tokens

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def select_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token for one row of logits ``[vocab]``."""
    row = logits.float()
    if params.greedy:
        return int(torch.argmax(row).item())
    row = apply_temperature(row, params.temperature)
    row = apply_top_k(row, params.top_k)
    row = apply_top_p(row, params.top_p)
    probs = torch.softmax(row, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
