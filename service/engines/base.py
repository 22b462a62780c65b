"""The engine interface the API talks to; the transformers and vLLM backends implement it.

Requests carry their own ``AlignmentSpec`` so that one batch can mix plain, Linear-Alignment and
steered requests with different settings.

Prompts are conversations (``list[Message]``) rendered under the model's chat template, with one
convention: a conversation of exactly one message whose role is ``COMPLETION_ROLE`` is a *raw text
prompt* (OpenAI's ``/v1/completions``), tokenised as ``tokenizer(text)`` with no template and no
default system message. A marker role rather than a new field keeps the Engine protocol,
``GenerationRequest`` and the worker unchanged, and ``ChatPrompts`` (the one place both engines
tokenise through) handles it for generation and the prompt budget alike. The role cannot come from
a client (the API schemas accept only system/user/assistant/developer), only from
``completion_prompt``; template-only paths (reward readouts, head capture) refuse it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from ..alignment.sampling import SamplingParams
from ..alignment.spec import AlignmentSpec, SteeringVector

Message = dict[str, str]
FinishReason = Literal["stop", "length", "cancelled"]

COMPLETION_ROLE = "completion"  # the role of a raw text prompt's only message (see the module docstring)


def completion_prompt(text: str) -> list[Message]:
    """The conversation that stands for the raw text prompt ``text`` (continued, not answered)."""
    return [{"role": COMPLETION_ROLE, "content": text}]


def raw_prompt(messages: Sequence[Message]) -> str | None:
    """The text of a raw prompt made by ``completion_prompt``, or None for a chat conversation."""
    if len(messages) == 1 and messages[0]["role"] == COMPLETION_ROLE:
        return messages[0]["content"]
    if any(m["role"] == COMPLETION_ROLE for m in messages):
        raise ValueError(f"a {COMPLETION_ROLE!r} message must be a conversation's only message")
    return None


class RequestRejected(ValueError):
    """An engine refuses a request it cannot serve as asked (not a fault of the engine): the
    application reports it as a 4xx with ``code`` instead of a 500."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class TokenEvent:
    request_id: str
    token_id: int
    text: str  # newly decodable text (may be empty while a multi-byte character is incomplete)
    index: int  # 0-based position in the completion


@dataclass
class GenerationRequest:
    request_id: str
    messages: list[Message]
    sampling: SamplingParams
    alignment: AlignmentSpec = field(default_factory=AlignmentSpec)
    on_token: Callable[[TokenEvent], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class GenerationResult:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    principle_prompt_tokens: int | None
    completion_tokens: int
    strengths: list[float]  # r used per generated token (LA only)
    first_token_s: float  # from engine start of this request to its first token
    total_s: float

    @property
    def mean_strength(self) -> float | None:
        return sum(self.strengths) / len(self.strengths) if self.strengths else None


@dataclass
class EngineStats:
    """The engine's own view of its load, exported on /metrics (vLLM fills it from its scheduler
    stats; the reference engine has no block-managed KV cache, so its usage stays NaN)."""

    running_sequences: int = 0  # sequences being decoded (an LA request counts two)
    waiting_sequences: int = 0  # admitted to the engine, not yet scheduled
    kv_cache_usage: float = float("nan")  # fraction of KV-cache blocks in use
    preemptions: int = 0  # cumulative
    prefix_cache_queries: int = 0  # cumulative prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # cumulative prompt tokens found there

    def record_step(self, running: int, waiting: int, kv_cache_usage: float, preempted: int = 0,
                    cache_queries: int = 0, cache_hits: int = 0) -> None:
        """Apply one engine step's report: gauges replaced, counters advanced."""
        self.running_sequences, self.waiting_sequences = running, waiting
        self.kv_cache_usage = kv_cache_usage
        self.preemptions += preempted
        self.prefix_cache_queries += cache_queries
        self.prefix_cache_hits += cache_hits


@dataclass(frozen=True)
class PromptSize:
    plain: int
    principle: int | None

    @property
    def longest(self) -> int:
        return max(self.plain, self.principle or 0)


class Readout(Protocol):
    """Conversations whose prefix is computed once; see ``Engine.open_readout``."""

    size: int

    def label_probability(self, options: Sequence[Sequence[SteeringVector]],
                          labels: tuple[str, str]) -> torch.Tensor:
        """``[len(options), size]``: P(``labels[0]``) normalised against ``labels[1]`` at the
        assistant's first token, one row per steering option (the vectors apply at the last prompt
        token). The label words come from the reward method, never from the engine."""
        ...

    def close(self) -> None: ...



class Engine(Protocol):
    backend: str
    model_name: str
    max_model_len: int
    num_layers: int
    num_heads: int
    head_dim: int

    def prompt_size(self, messages: list[Message], principle: str | None,
                    placement: str = "system") -> PromptSize: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Decode ``requests`` as one batch and return when all are done (the worker thread calls
        this for engines without ``submit``)."""
        ...

    def stats(self) -> EngineStats: ...

    def label_probability(
        self, conversations: Sequence[list[Message]], labels: tuple[str, str],
        steering: Sequence[SteeringVector] = (),
    ) -> list[float]:
        """P(``labels[0]``) / (P(``labels[0]``) + P(``labels[1]``)) for the assistant's first token of
        each conversation (the first token of each label word; ``ValueError`` if the two coincide)."""
        ...

    def capture_head_activations(self, conversations: Sequence[list[Message]],
                                 completions: Sequence[str] | None = None) -> torch.Tensor:
        """Per-head attention outputs (input of ``o_proj``) at the last prompt token, or, with
        ``completions``, at the last token of each completion written after the assistant's
        generation prompt: ``[n, layers, heads, head_dim]`` float32."""
        ...

    def open_readout(self, conversations: Sequence[list[Message]]) -> Readout:
        """Prefill every conversation except its last prompt token once, so that many steering
        options can then be tried at the readout position for the cost of one token each."""
        ...

    def close(self) -> None: ...


def is_continuous(engine: Engine) -> bool:
    """An engine that batches continuously by itself (vLLM, ``submit(request) -> Future``): the worker
    hands it each request as it arrives instead of collecting batches."""
    return callable(getattr(engine, "submit", None))


def readout_sequences(encode_chat: Callable[[list[Message]], list[int]], tokenizer: Any,
                      conversations: Sequence[list[Message]],
                      completions: Sequence[str] | None = None) -> list[list[int]]:
    """Token ids whose last position ``capture_head_activations`` reads: each conversation with its
    generation prompt, followed by its completion's tokens when completions are given."""
    seqs = [encode_chat(c) for c in conversations]
    if completions is None:
        return seqs
    if len(completions) != len(seqs):
        raise ValueError("one completion per conversation")
    return [s + list(tokenizer.encode(c, add_special_tokens=False)) for s, c in zip(seqs, completions, strict=True)]
