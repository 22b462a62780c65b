"""The served LLM as a generative judge: reward = P("Yes") to an English rubric question.

The probability is normalised over the two answer tokens, P(Yes) / (P(Yes) + P(No)), read from
the assistant's first-token distribution, so it is comparable across candidates and languages.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..engines.base import Engine, Message

YES_NO = ("Yes", "No")  # the answer words read from the first token: P(Yes) normalised against No
DEFAULT_RUBRIC = "Is the response helpful, correct and harmless?"
JUDGE_SYSTEM = (
    "You are a strict evaluator of AI assistant responses. Read the question, the response and the "
    f"criterion, then answer with a single word: {YES_NO[0]} or {YES_NO[1]}."
)


def rubric_for(principle: str | None, rubric: str | None) -> str:
    if rubric and rubric.strip():
        return rubric.strip()
    if principle and principle.strip():
        return f"Does the response follow this principle: {principle.strip()}"
    return DEFAULT_RUBRIC


def judge_conversation(prompt: str, response: str, rubric: str) -> list[Message]:
    user = (
        f"[Question]\n{prompt}\n\n[Response]\n{response}\n\n[Criterion]\n{rubric}\n\n"
        f"Answer {YES_NO[0]} or {YES_NO[1]}."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


class GenerativeJudge:
    name = "judge"

    def score(self, engine: Engine, prompt: str, responses: Sequence[str], rubric: str,
              compiled: object = None) -> list[float]:
        return engine.label_probability([judge_conversation(prompt, r, rubric) for r in responses], YES_NO)
