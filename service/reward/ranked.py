"""The ranked judge format: which of two responses is better, answered with a letter.

Chai et al. (2025) score Activation RMs in two formats: *scalar* (Yes/No about one response, the
``judge`` module) and *ranked* (the prompt and two responses, "which is better?"). Here a ranked
query shows the two responses as "A" and "B"; the reward of X against Y is read from the first
answer token, P("A") normalised against "B", in **both orders** and averaged:

    P(X ≻ Y) = ½ [ P_A(X as A, Y as B) + (1 − P_A(Y as A, X as B)) ]

which cancels a uniform position bias (a judge that leans toward "A" by the same logit shift in
both orders ranks X and Y as it would without the lean) and makes P(Y ≻ X) = 1 − P(X ≻ Y) exactly.

For N candidates the score of response i is its **mean win probability** against the others,
``mean_{j≠i} P(i ≻ j)``; that costs N(N−1) queries, so ranked scoring takes at most
``MAX_RANKED_RESPONSES`` candidates. With one candidate there is nothing to compare: its score is
0.5. With two, the scores are P(X ≻ Y) and its complement.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..alignment.spec import SteeringVector
from ..engines.base import Engine, Message

AB = ("A", "B")  # the answer words; P(A) normalised against B
MAX_RANKED_RESPONSES = 16  # N(N-1) = 240 queries
RANKED_SYSTEM = (
    "You are a strict evaluator of AI assistant responses. Read the question, two responses labelled "
    f"{AB[0]} and {AB[1]}, and the criterion, then answer with a single letter: {AB[0]} or {AB[1]}."
)
_BATCH = 32  # ranked queries per engine call


def ranked_conversation(prompt: str, first: str, second: str, rubric: str) -> list[Message]:
    """The zero-shot ranked query: ``first`` shown as A, ``second`` as B."""
    user = (
        f"[Question]\n{prompt}\n\n[Response {AB[0]}]\n{first}\n\n[Response {AB[1]}]\n{second}\n\n"
        f"[Criterion]\n{rubric}\n\nWhich response meets the criterion better? Answer {AB[0]} or {AB[1]}."
    )
    return [{"role": "system", "content": RANKED_SYSTEM}, {"role": "user", "content": user}]


def ordered_pairs(n: int) -> list[tuple[int, int]]:
    """Every (i, j), i ≠ j: response i shown as A, response j as B."""
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def win_probability(p_a_xy: float, p_a_yx: float) -> float:
    """P(X ≻ Y) from P(A) with X shown first (``p_a_xy``) and with Y shown first (``p_a_yx``)."""
    return 0.5 * (p_a_xy + (1.0 - p_a_yx))


def mean_win_probabilities(p_a: Sequence[float], n: int) -> list[float]:
    """Scores of ``n`` responses from P(A) of the queries of ``ordered_pairs(n)``, in that order."""
    pairs = ordered_pairs(n)
    if len(p_a) != len(pairs):
        raise ValueError(f"expected {len(pairs)} ranked probabilities for {n} responses, got {len(p_a)}")
    if n == 1:
        return [0.5]
    at = {pair: p for pair, p in zip(pairs, p_a, strict=True)}
    return [sum(win_probability(at[(i, j)], at[(j, i)]) for j in range(n) if j != i) / (n - 1) for i in range(n)]


def ranked_scores(engine: Engine, prompt: str, responses: Sequence[str], rubric: str,
                  steering: Sequence[SteeringVector] = ()) -> list[float]:
    """Mean win probability of each response against the others (see the module docstring)."""
    n = len(responses)
    if n > MAX_RANKED_RESPONSES:
        raise ValueError(f"ranked scoring compares every pair; at most {MAX_RANKED_RESPONSES} responses, got {n}")
    convs = [ranked_conversation(prompt, responses[i], responses[j], rubric) for i, j in ordered_pairs(n)]
    p_a: list[float] = []
    for k in range(0, len(convs), _BATCH):
        p_a += engine.label_probability(convs[k:k + _BATCH], AB, steering)
    return mean_win_probabilities(p_a, n)
