"""The preference profile: what a stored (or inline) profile says, validated once.

One schema serves the wire and the store: a stored profile is the JSON of this model, read back
with ``model_validate`` (fields added later have defaults, so old rows still validate). It lives in
the domain layer because the engines' planning and the compile jobs read it, not only the API.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..alignment.linear_alignment import LinearAlignmentConfig
from ..reward.activation_rm import MIN_RANKED_PAIRS, Format

MAX_TEXT = 100_000
MAX_PRINCIPLE = 4_000
MAX_EXAMPLE = 8_000
MAX_EXAMPLES = 512


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LASettings(Strict):
    """Linear Alignment settings. ``strength`` is the paper's ratio r (0 = principle prompt only)."""

    enabled: bool = True
    strength: float = Field(3.0, ge=0.0, le=100.0, description="fixed ratio r in l_in + r (l_in - l_out)")
    adaptive: bool = Field(False, description="per-token r from a KL budget instead of a fixed r")
    kl_budget: float = Field(0.1, ge=1e-6, le=10.0, description="adaptive: nats per token")
    max_strength: float = Field(10.0, ge=0.0, le=100.0, description="adaptive: upper clip on r")
    plausibility_top_p: float = Field(0.8, gt=0.0, le=1.0)
    plausibility_temperature: float = Field(0.5, ge=0.01, le=10.0)
    placement: Literal["system", "user"] = Field(
        "system", description="principle appended to the system message, or put before the last user message "
        "(no effect on /v1/completions' raw prompts: the principle leads the prompt text there)")
    sampling: Literal["request", "authors"] = Field(
        "request", description="sampled requests: the request's temperature/top-k/top-p on the aligned logits, or "
        "the authors' code: one temperature (plausibility_temperature) for mask and draw, no top-k/top-p")

    def to_config(self, principle: str) -> LinearAlignmentConfig:
        return LinearAlignmentConfig(
            principle=principle, strength=self.strength, adaptive=self.adaptive, kl_budget=self.kl_budget,
            max_strength=self.max_strength, plausibility_top_p=self.plausibility_top_p,
            plausibility_temperature=self.plausibility_temperature, placement=self.placement,
            sampling=self.sampling,
        )


class ARMExample(Strict):
    prompt: str = Field(..., min_length=1, max_length=MAX_EXAMPLE)
    response: str = Field(..., min_length=1, max_length=MAX_EXAMPLE)
    label: Literal["good", "bad"] = Field(..., description="does the response meet the rubric?")


class ARMPair(Strict):
    prompt: str = Field(..., min_length=1, max_length=MAX_EXAMPLE)
    chosen: str = Field(..., min_length=1, max_length=MAX_EXAMPLE)
    rejected: str = Field(..., min_length=1, max_length=MAX_EXAMPLE)


class ActivationRMSettings(Strict):
    """Few-shot examples compiled into an Activation Reward Model (Chai et al., 2025): selected
    attention heads whose few-shot mean activations score responses and steer generation."""

    examples: list[ARMExample] = Field(default_factory=list, max_length=MAX_EXAMPLES)
    pairs: list[ARMPair] = Field(default_factory=list, max_length=MAX_EXAMPLES // 2,
                                 description="chosen/rejected pairs; each adds one good and one bad example")
    num_heads: int = Field(16, ge=1, le=4096, description="attention heads kept by the selection")
    shots_per_context: int = Field(4, ge=0, le=16, description="labelled demos in each few-shot context")
    iterations: int = Field(100, ge=1, le=500, description="REINFORCE steps of the head selection")
    objective: Literal["ranking", "likelihood"] = Field(
        "ranking", description="head-selection reward: 'ranking' = good above bad responses of the same prompt "
        "(calibration-invariant); 'likelihood' = log-probability of the labels (Multimodal Task Vectors)")
    format: Format = Field(
        "scalar", description="judge format the heads are compiled and scored in: 'scalar' = Yes/No about one "
        "response; 'ranked' = which of two responses (A or B) is better, compiled from chosen/rejected pairs "
        f"(at least {MIN_RANKED_PAIRS}: pairs, or good and bad examples of the same prompt) and scored as each "
        "response's mean win probability against the others, every comparison read in both orders")
    steer_strength: float = Field(
        4.0, ge=-50.0, le=50.0,
        description="generation steering in standard deviations of the examples along each head's direction; "
        "0 = off, negative steers away")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _labelled(self) -> ActivationRMSettings:
        n = len(self.examples) + 2 * len(self.pairs)
        good = sum(e.label == "good" for e in self.examples) + len(self.pairs)
        if n > MAX_EXAMPLES:
            raise ValueError(f"at most {MAX_EXAMPLES} labelled examples (pairs count twice); got {n}")
        if n < 4:
            raise ValueError("an activation reward model needs at least 4 labelled examples (pairs count twice)")
        if good == 0 or good == n:
            raise ValueError("examples need both labels: some 'good' and some 'bad'")
        if self.format == "ranked" and self.ranked_pair_count() < MIN_RANKED_PAIRS:
            raise ValueError(f"format 'ranked' needs at least {MIN_RANKED_PAIRS} chosen/rejected pairs (pairs, or "
                             "'good' and 'bad' examples of the same prompt)")
        return self

    def ranked_pair_count(self) -> int:
        """Pairs a ranked compile gets: per prompt with both labels, max(goods, bads)."""
        counts: dict[str, list[int]] = {}
        for e in self.examples:
            counts.setdefault(e.prompt, [0, 0])[0 if e.label == "good" else 1] += 1
        for p in self.pairs:
            c = counts.setdefault(p.prompt, [0, 0])
            c[0], c[1] = c[0] + 1, c[1] + 1
        return sum(max(g, b) for g, b in counts.values() if g and b)


class ProfileSpec(Strict):
    """A preference profile: a principle applied by Linear Alignment, a rubric for scoring, and
    optionally few-shot examples compiled into an Activation Reward Model."""

    principle: str | None = Field(None, max_length=MAX_PRINCIPLE)
    la: LASettings = Field(default_factory=LASettings)
    rubric: str | None = Field(None, max_length=MAX_PRINCIPLE, description="English yes/no question for /score")
    description: str | None = Field(None, max_length=1_000)
    enforce_language: bool = Field(
        False, description="apply Linear Alignment toward 'answer in the language of the user's message' "
        "(added to the principle, if any)")
    activation_rm: ActivationRMSettings | None = Field(
        None, description="few-shot examples; creating a stored profile with them starts a compile job")

    @field_validator("principle", "rubric")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be blank")
        return v
