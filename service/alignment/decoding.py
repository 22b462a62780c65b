"""One decoding step for a batch of requests, plain or Linear-Aligned — shared by both engines.

A request decodes from one logits row (its plain stream) or, with Linear Alignment, from two:
the principle row (``l_in``) and the plain row (``l_out``). Per step, every request gets exactly
one token: LA requests from their aligned logits (``linear_alignment``), the others from their
plain row, all drawn together by ``sampling.sample``. The engines then feed an LA request's token
to both of its streams (transformers) or force it on both rows (vLLM).

``DecodePlan`` holds the row indices and the per-row settings as device tensors; an engine builds
it when requests join or leave the batch and reuses it every step until then, so a step does no
host work proportional to the batch and never waits for the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .device_tensor import device_tensor
from .linear_alignment import AlignmentBatch, LinearAlignmentConfig, linear_alignment_step
from .sampling import SamplingBatch, SamplingParams, sample


@dataclass(frozen=True)
class DecodeRow:
    """Host description of one request in the batch."""

    plain_row: int  # row of its plain stream (l_out under LA) in the step's logits
    principle_row: int | None  # row of its principle stream (l_in), LA only
    la: LinearAlignmentConfig | None
    sampling: SamplingParams
    generator: torch.Generator | None  # kept by the request across steps (seeded rows only)

    def __post_init__(self) -> None:
        if (self.la is None) != (self.principle_row is None):
            raise ValueError("an LA row needs a principle row, and only an LA row has one")


def effective_sampling(la: LinearAlignmentConfig | None, params: SamplingParams) -> SamplingParams:
    """The settings an aligned row is sampled with (``LinearAlignmentConfig.sampling``): the request's
    own, or the authors' single temperature with no top-k/top-p. Greedy stays greedy."""
    if la is None or la.sampling == "request" or params.greedy:
        return params
    return replace(params, temperature=la.plausibility_temperature, top_k=0, top_p=1.0)


@dataclass(frozen=True)
class DecodePlan:
    size: int  # requests
    plain_rows: torch.Tensor  # [R] long
    la_positions: torch.Tensor  # [A] long: which of the R requests are aligned
    principle_rows: torch.Tensor  # [A] long
    la: AlignmentBatch | None
    sampling: SamplingBatch
    all_la: bool  # every request is aligned (la_positions == arange): no scatter needed

    @classmethod
    def build(cls, rows: Sequence[DecodeRow], device: torch.device | str) -> DecodePlan:
        la_pos = [i for i, r in enumerate(rows) if r.la is not None]
        configs = [r.la for r in rows if r.la is not None]

        def idx(values: list[int]) -> torch.Tensor:
            return device_tensor(values, torch.long, device)

        return cls(
            size=len(rows),
            plain_rows=idx([r.plain_row for r in rows]),
            la_positions=idx(la_pos),
            principle_rows=idx([r.principle_row for r in rows if r.principle_row is not None]),
            la=AlignmentBatch.build(configs, device) if configs else None,
            sampling=SamplingBatch.build([effective_sampling(r.la, r.sampling) for r in rows],
                                         [r.generator for r in rows], device),
            all_la=bool(rows) and len(la_pos) == len(rows),
        )


@dataclass
class Draw:
    tokens: torch.Tensor  # [R] long, one per request, on the logits' device
    strength: torch.Tensor  # [A] float32, the LA step size used per aligned request


def decode_step(logits: torch.Tensor, plan: DecodePlan, sync_free: bool | None = None) -> Draw:
    """Aligned logits where due, then one token per request. ``sync_free`` (default: on
    accelerators) never reads the device."""
    rows = logits.index_select(0, plan.plain_rows).float()
    strength = torch.empty(0, device=logits.device)
    if plan.la is not None:
        l_out = rows if plan.all_la else rows.index_select(0, plan.la_positions)
        step = linear_alignment_step(logits.index_select(0, plan.principle_rows), l_out, plan.la, sync_free)
        strength = step.strength
        rows = step.logits if plan.all_la else rows.index_copy_(0, plan.la_positions, step.logits)
    return Draw(tokens=sample(rows, plan.sampling, sync_free), strength=strength)
