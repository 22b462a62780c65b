"""The state of a component that loads in the background (the generator, the reward model)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    ABSENT = "none"  # not configured


@dataclass(frozen=True)
class Readiness:
    phase: Phase
    error: str | None = None  # why, when FAILED

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def describe(self) -> str:
        return f"{self.phase.value}: {self.error}" if self.error else self.phase.value


LOADING = Readiness(Phase.LOADING)
READY = Readiness(Phase.READY)
ABSENT = Readiness(Phase.ABSENT)


def failed(exc: BaseException | str) -> Readiness:
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return Readiness(Phase.FAILED, why)
