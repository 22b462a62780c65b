"""Building the two Linear-Alignment contexts from a conversation or a raw text prompt.

Chat conversations: both streams get the same system message (the request's, else the configured
default) so the only difference between them is the principle: the *principle* stream appends it to
the system message (or, with ``placement="user"``, puts it before the last user message), which is
how the paper puts the principle in context.

Raw text prompts (``base.completion_prompt``, OpenAI's ``/v1/completions``) are continued, not
answered: the plain stream is ``tokenizer(text)`` (the tokenizer's own special tokens, as vLLM's
completions do; no chat template, no default system message) and the principle stream is the
principle as a leading paragraph, ``tokenizer(principle + "\\n\\n" + text)``; there is no system slot,
so ``placement`` has no effect on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import COMPLETION_ROLE, Message, PromptSize, raw_prompt


def _chat_only(messages: list[Message]) -> None:
    if raw_prompt(messages) is not None:
        raise ValueError(f"a raw text prompt (role {COMPLETION_ROLE!r}) has no chat template or system message")


def with_system(messages: list[Message], default_system: str | None) -> list[Message]:
    """The conversation with an explicit system message first (the plain stream)."""
    _chat_only(messages)
    if messages and messages[0]["role"] == "system":
        return [dict(m) for m in messages]
    head = [{"role": "system", "content": default_system}] if default_system else []
    return head + [dict(m) for m in messages]


def with_principle(messages: list[Message], principle: str, default_system: str | None,
                   placement: str = "system") -> list[Message]:
    """The conversation that also states the principle (the principle stream): appended to the
    system message (default) or put before the last user message (``placement="user"``)."""
    convo = with_system(messages, default_system)
    if placement == "user":
        last = max(i for i, m in enumerate(convo) if m["role"] == "user")
        convo[last] = {"role": "user", "content": f"{principle}\n\n{convo[last]['content']}"}
        return convo
    if convo and convo[0]["role"] == "system":
        base = convo[0]["content"].strip()
        convo[0] = {"role": "system", "content": f"{base}\n\n{principle}" if base else principle}
    else:
        convo.insert(0, {"role": "system", "content": principle})
    return convo


def raw_with_principle(text: str, principle: str) -> str:
    """A raw prompt's principle stream text: the principle as its leading paragraph."""
    return f"{principle}\n\n{text}"


def encode_chat(tokenizer: Any, messages: list[Message], generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template (the one place that calls it)."""
    _chat_only(messages)
    out: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(i) for i in ids]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a raw text prompt: ``tokenizer(text)`` with its own special tokens (a BOS where
    the tokenizer adds one), as vLLM tokenises ``/v1/completions`` prompts."""
    return [int(i) for i in tokenizer(text)["input_ids"]]


@dataclass(frozen=True)
class ChatPrompts:
    """A model's prompts: the chat template plus the server's default system message, for the plain
    and the principle stream, or a raw text prompt as it is. Both engines tokenise through this."""

    tokenizer: Any
    default_system: str | None = None

    def encode(self, messages: list[Message]) -> list[int]:
        """The prompt ids of a conversation (chat template) or of a raw text prompt (none)."""
        raw = raw_prompt(messages)
        return encode_text(self.tokenizer, raw) if raw is not None else encode_chat(self.tokenizer, messages)

    def encode_chat(self, messages: list[Message]) -> list[int]:
        """Chat-template ids only, for readouts at the assistant's first token (reward scoring, head
        capture): a raw text prompt has no assistant turn, so it is refused (``ValueError``)."""
        return encode_chat(self.tokenizer, messages)

    def streams(self, messages: list[Message], principle: str | None,
                placement: str = "system") -> tuple[list[int], list[int] | None]:
        """Token ids of the plain stream and, when there is a principle, of the principle stream."""
        raw = raw_prompt(messages)
        if raw is not None:  # placement has no effect: a raw prompt has no system or user slot
            plain = encode_text(self.tokenizer, raw)
            return plain, encode_text(self.tokenizer, raw_with_principle(raw, principle)) if principle else None
        plain = encode_chat(self.tokenizer, with_system(messages, self.default_system))
        if not principle:
            return plain, None
        return plain, encode_chat(self.tokenizer, with_principle(messages, principle, self.default_system, placement))

    def size(self, messages: list[Message], principle: str | None, placement: str = "system") -> PromptSize:
        plain, with_p = self.streams(messages, principle, placement)
        return PromptSize(len(plain), len(with_p) if with_p is not None else None)
