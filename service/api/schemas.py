"""Pydantic models at the API edge. Every field is bounded so bad input is a 4xx, never a 500."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from ..domain.profile_spec import (  # noqa: F401  (re-exported: the API's request bodies use them)
    MAX_EXAMPLE,
    MAX_EXAMPLES,
    MAX_PRINCIPLE,
    MAX_TEXT,
    ActivationRMSettings,
    ARMExample,
    ARMPair,
    LASettings,
    ProfileSpec,
    Strict,
)
from ..store.profiles import MAX_REF_CHARS, REF_PATTERN

# A stored profile reference, bounded before it reaches the store (which checks the version's range).
ProfileRef = Annotated[str, StringConstraints(max_length=MAX_REF_CHARS, pattern=REF_PATTERN)]


class ProfileCreate(ProfileSpec):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class CompiledInfo(BaseModel):
    heads: list[tuple[int, int]] = Field(..., description="(layer, head) pairs patched for scoring, most useful first")
    steer_heads: list[tuple[int, int]] = Field(..., description="(layer, head) pairs steered during generation")
    format: Literal["scalar", "ranked"] = Field("scalar", description="the Activation-RM scoring format compiled")
    model: str
    examples: int
    zero_shot_accuracy: float = Field(..., description="judge accuracy on the examples without patching")
    patched_accuracy: float = Field(..., description="accuracy with the selected heads patched (in-sample)")
    objective: str = Field("likelihood", description="the head-selection reward the profile was compiled with")
    zero_shot_pair_accuracy: float | None = Field(
        None, description="share of (good, bad) pairs of the same prompt the unpatched judge orders right")
    patched_pair_accuracy: float | None = Field(None, description="the same with the selected heads patched "
                                                "(in-sample)")
    compile_s: float


class ProfileOut(BaseModel):
    name: str
    version: int
    ref: str
    created_at: float
    spec: ProfileSpec
    compiled: CompiledInfo | None = None


class JobOut(BaseModel):
    id: str
    kind: str
    profile: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    phase: str
    done: int
    total: int
    error: str | None = None
    profile_ref: str | None = Field(None, description="the profile version written when the job succeeded")
    cancel_requested: bool
    attempts: int
    created_at: float
    updated_at: float


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(..., max_length=MAX_TEXT)


class GenerateRequest(Strict):
    prompt: str | None = Field(None, max_length=MAX_TEXT)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=256)
    profile: ProfileRef | ProfileSpec | None = Field(
        None, description="a stored profile ('name' or 'name@version') or an inline profile"
    )
    max_tokens: int | None = Field(None, ge=1, description="default: min(128, the server's limit)")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=100_000)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[str] = Field(default_factory=list, max_length=8)
    stream: bool = False
    steer_strength: float | None = Field(
        None, ge=-50.0, le=50.0, description="override the profile's activation steering strength (0 = off)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str]) -> list[str]:
        if any(not s or len(s) > 64 for s in v):
            raise ValueError("stop strings must be 1-64 characters")
        return v

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt must not be empty")
        if self.messages is not None:
            if self.messages[-1].role != "user":
                raise ValueError("the last message must be from the user")
            if any(m.role == "system" for m in self.messages[1:]):
                raise ValueError("only the first message may be a system message")
            if not any(m.role == "user" and m.content.strip() for m in self.messages):
                raise ValueError("messages need a non-empty user message")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    principle_prompt_tokens: int | None
    completion_tokens: int


class Timings(BaseModel):
    queue_s: float
    first_token_s: float
    total_s: float
    tokens_per_s: float


class AlignmentReport(BaseModel):
    method: Literal["none", "linear_alignment", "activation_steering", "linear_alignment+activation_steering"]
    profile: str | None = Field(None, description="'name@version', 'inline' or null")
    principle: str | None = None
    strength_mode: Literal["fixed", "adaptive"] | None = None
    mean_strength: float | None = None
    steered_heads: int = Field(0, description="attention heads steered by the profile's compiled activations")
    steer_strength: float | None = None


class LanguageInfo(BaseModel):
    prompt: str = Field(..., description="detected language of the last user message ('und' if unsure)")
    answer: str
    match: bool
    answer_scripts: dict[str, float] = Field(..., description="share of letters per script in the answer")


class GenerateResponse(BaseModel):
    id: str
    model: str
    text: str
    finish_reason: Literal["stop", "length", "cancelled"]
    usage: Usage
    timings: Timings
    alignment: AlignmentReport
    language: LanguageInfo


class ScoreRequest(Strict):
    prompt: str = Field(..., min_length=1, max_length=MAX_TEXT)
    responses: list[str] = Field(..., min_length=1, max_length=64)
    method: Literal["judge", "activation_rm", "reward_model"] = Field(
        "judge", description="'judge': P(Yes) to the rubric; 'activation_rm': the same with a compiled "
        "profile's heads patched (needs a stored profile); 'reward_model': the English reward model's "
        "scalar reward (any language; rubric and profile do not apply)")
    rubric: str | None = Field(None, max_length=MAX_PRINCIPLE)
    profile: ProfileRef | ProfileSpec | None = None

    @field_validator("responses")
    @classmethod
    def _lengths(cls, v: list[str]) -> list[str]:
        if any(len(r) > MAX_TEXT for r in v):
            raise ValueError(f"each response must be at most {MAX_TEXT} characters")
        return v


class ScoreResponse(BaseModel):
    method: str
    rubric: str | None = Field(None, description="the judge's question (judge and activation_rm)")
    model: str | None = Field(None, description="the reward model that scored (reward_model)")
    scores: list[float]
    ranking: list[int] = Field(..., description="indices of responses, best first")
    profile: str | None = None


class ErrorBody(BaseModel):
    type: str
    message: str
    detail: list[dict[str, object]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
