"""Building the two Linear-Alignment contexts from a conversation.

Both streams get the same system message (the request's, else the configured default) so the
only difference between them is the principle: the *principle* stream appends it to the system
message, which is how the paper puts the principle in context.
"""

from __future__ import annotations

from .base import Message


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
