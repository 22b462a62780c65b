"""Reward methods behind ``POST /score``. Each has a ``name`` and ``score(engine, prompt, responses,
rubric)``; the English reward model and the Activation RM plug in here as further entries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..engines.base import Engine
from .activation_rm import ActivationRMScorer, CompiledARM
from .judge import GenerativeJudge


class Scorer(Protocol):
    name: str

    def score(self, engine: Engine, prompt: str, responses: Sequence[str], rubric: str,
              compiled: CompiledARM | None = None) -> list[float]: ...


def default_scorers() -> dict[str, Scorer]:
    return {"judge": GenerativeJudge(), "activation_rm": ActivationRMScorer()}
