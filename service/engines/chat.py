"""Building the two Linear-Alignment contexts from a conversation.

Both streams get the same system message (the request's, else the configured default) so the
only difference between them is the principle: the *principle* stream appends it to the system
message, which is how the paper puts the principle in context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Message, PromptSize


def with_system(messages: list[Message], default_system: str | None) -> list[Message]:
    """The conversation with an explicit system message first (the plain stream)."""
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


def encode_chat(tokenizer: Any, messages: list[Message], generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template (the one place that calls it)."""
    out: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(i) for i in ids]


@dataclass(frozen=True)
class ChatPrompts:
    """A model's prompts: the chat template plus the server's default system message, for the plain
    and the principle stream. Both engines tokenise through this."""

    tokenizer: Any
    default_system: str | None = None

    def encode(self, messages: list[Message]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def streams(self, messages: list[Message], principle: str | None,
                placement: str = "system") -> tuple[list[int], list[int] | None]:
        """Token ids of the plain stream and, when there is a principle, of the principle stream."""
        plain = self.encode(with_system(messages, self.default_system))
        if not principle:
            return plain, None
        return plain, self.encode(with_principle(messages, principle, self.default_system, placement))

    def size(self, messages: list[Message], principle: str | None, placement: str = "system") -> PromptSize:
        plain, with_p = self.streams(messages, principle, placement)
        return PromptSize(len(plain), len(with_p) if with_p is not None else None)
