"""From a profile to what the engine does: Linear Alignment toward a principle and steering."""

from __future__ import annotations

from ..alignment.spec import AlignmentSpec, SteeringVector
from ..language.fidelity import language_principle
from ..reward.activation_rm import CompiledARM
from .profile_spec import ProfileSpec


def alignment_for(spec: ProfileSpec | None, prompt_language: str | None = None,
                  compiled: CompiledARM | None = None, steer_strength: float | None = None) -> AlignmentSpec:
    """The request's alignment: Linear Alignment toward the principle (``enforce_language`` adds an
    answer-in-<language> principle) and activation steering from a compiled profile."""
    if spec is None:
        return AlignmentSpec()
    steering: tuple[SteeringVector, ...] = ()
    if compiled is not None:
        strength = steer_strength if steer_strength is not None else (
            spec.activation_rm.steer_strength if spec.activation_rm else 0.0)
        steering = tuple(compiled.generation_steering(strength))
    if not spec.la.enabled:
        return AlignmentSpec(steering=steering)
    parts = [spec.principle] if spec.principle else []
    if spec.enforce_language and prompt_language is not None:
        parts.append(language_principle(prompt_language))
    la = spec.la.to_config(" ".join(parts)) if parts else None
    return AlignmentSpec(la=la, steering=steering)
