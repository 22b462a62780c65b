"""What a request asks the engine to do to its decoding: Linear Alignment and/or steering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .linear_alignment import LinearAlignmentConfig

SteerPosition = Literal["generated", "last_prompt", "all"]


@dataclass(frozen=True)
class SteeringVector:
    """Add ``scale * vector`` to the residual stream after ``layer`` (``head is None``) or to one
    attention head's output before ``o_proj`` (``head`` set; ``vector`` has ``head_dim`` entries).

    ``position`` chooses where: every generated token, only the last prompt token (the
    Activation-RM readout position), or every position.
    """

    layer: int
    vector: torch.Tensor
    head: int | None = None
    scale: float = 1.0
    position: SteerPosition = "generated"
    replace: bool = False  # heads only: replace the head output instead of adding to it


@dataclass(frozen=True)
class AlignmentSpec:
    la: LinearAlignmentConfig | None = None
    steering: tuple[SteeringVector, ...] = field(default_factory=tuple)

    @property
    def is_plain(self) -> bool:
        return self.la is None and not self.steering
