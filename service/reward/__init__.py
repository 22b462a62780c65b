"""Reward methods behind ``POST /score``. Each has a ``name`` and ``score(engine, prompt, responses,
rubric)``; the English reward model and the Activation RM plug in here as further entries."""

from __future__ import annotations

from typing import Protocol

from ..engines.base import Engine
from .judge import GenerativeJudge


class Scorer(Protocol):
    name: str

    def score(self, engine: Engine, prompt: str, responses: list[str], rubric: str) -> list[float]: ...


def default_scorers() -> dict[str, Scorer]:
    return {"judge": GenerativeJudge()}
