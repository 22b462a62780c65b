"""Two-label answer probabilities: the token arithmetic both engines share.

Scoring reads the assistant's first-token distribution and compares two answer words — ("Yes",
"No") for the scalar judge, ("A", "B") for the ranked one. Which words is the reward method's
business (``service.reward``); the engines only turn words into first-token ids and two logits
into one probability.
"""

from __future__ import annotations

import math
from typing import Any

LabelPair = tuple[str, str]


def label_token_ids(tokenizer: Any, labels: LabelPair) -> tuple[int, int]:
    """First token id of each label word as the answer's first token (no special tokens).

    Raises ``ValueError`` when a word is blank or when both words start with the same token: their
    probabilities could not be told apart, so every score would be 0.5."""
    if len(labels) != 2:
        raise ValueError(f"expected two label words, got {len(labels)}")
    ids = []
    for word in labels:
        if not word or not word.strip():
            raise ValueError("label words must not be blank")
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if not tokens:
            raise ValueError(f"label word {word!r} encodes to no token")
        ids.append(int(tokens[0]))
    if ids[0] == ids[1]:
        raise ValueError(f"label words {labels[0]!r} and {labels[1]!r} start with the same token (id {ids[0]}); "
                         "their probabilities cannot be told apart — choose words whose first tokens differ")
    return ids[0], ids[1]


class LabelTokens:
    """``label_token_ids`` remembered per label pair (each engine holds one)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[LabelPair, tuple[int, int]] = {}

    def ids(self, labels: LabelPair) -> tuple[int, int]:
        if labels not in self._ids:
            self._ids[labels] = label_token_ids(self.tokenizer, labels)
        return self._ids[labels]


def first_of_two(logprob_first: float, logprob_second: float) -> float:
    """P(first) / (P(first) + P(second)) from two log-probabilities (or logits), overflow-free."""
    d = logprob_second - logprob_first
    if d > 0:
        e = math.exp(-d)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(d))
