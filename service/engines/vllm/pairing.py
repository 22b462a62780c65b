"""Lock-step bookkeeping for Linear-Alignment pairs (pure; no vLLM import).

An LA request is two vLLM sequences, ``plain`` and ``principle``. Tokens are committed to a pair
only in a step where *both* members sampled, and the logits processor forced the same token on
both rows. In any other step the member that did sample (e.g. it finished its prefill while its
partner is still being prefilled, or its partner was preempted) has its token vetoed and its
computed-token count rolled back by one, so it recomputes its last token next step. Outputs of
the two members therefore never differ; a member only waits (one token of compute a step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

EXTRA_KEY = "alignserve"
ROLES = ("plain", "principle")


@dataclass
class PairBook:
    """Which vLLM request ids form which pair (filled as requests arrive)."""

    members: dict[str, dict[str, str]] = field(default_factory=dict)  # pair -> role -> req id
    pair_of: dict[str, str] = field(default_factory=dict)  # req id -> pair
    vetoes: int = 0

    def add(self, req_id: str, pair: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown pair role {role!r}")
        self.members.setdefault(pair, {})[role] = req_id
        self.pair_of[req_id] = pair

    def partner(self, req_id: str) -> str | None:
        pair = self.pair_of.get(req_id)
        if pair is None:
            return None
        for rid in self.members[pair].values():
            if rid != req_id:
                return rid
        return None

    def drop(self, req_id: str) -> None:
        pair = self.pair_of.pop(req_id, None)
        if pair is None:
            return
        roles = self.members.get(pair, {})
        for role, rid in list(roles.items()):
            if rid == req_id:
                del roles[role]
        if not roles:
            self.members.pop(pair, None)


def pair_tag(extra_args: Mapping[str, object] | None) -> tuple[str, str] | None:
    """``(pair, role)`` from a request's ``SamplingParams.extra_args``, or None."""
    if not extra_args:
        return None
    tag = extra_args.get(EXTRA_KEY)
    if not isinstance(tag, Mapping) or "pair" not in tag:
        return None
    return str(tag["pair"]), str(tag["role"])


def vetoes(book: PairBook, sampled: Mapping[str, list[int]]) -> set[str]:
    """Request ids whose sampled tokens this step must be discarded.

    ``sampled`` maps every request scheduled this step to the tokens it produced (empty for a
    partial prefill). A paired member keeps its token only if its partner produced the very same
    token in the same step.
    """
    out: set[str] = set()
    for rid, toks in sampled.items():
        if not toks or rid not in book.pair_of:
            continue
        mate = book.partner(rid)
        if mate is None or sampled.get(mate) != toks:
            out.add(rid)
    return out
