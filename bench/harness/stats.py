"""Seeded bootstrap intervals, so that a re-run of a benchmark writes the same numbers."""

from __future__ import annotations

import random
from collections.abc import Sequence


def bootstrap_ci(values: Sequence[float], rounds: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    ``rounds`` resamples, each of ``len(values)`` draws with replacement (one
    ``random.Random(seed).choice`` per draw, in order); their means are sorted and the bounds are
    the means at ranks ``round(a * rounds)`` and ``round((1 - a) * rounds) - 1`` with
    ``a = (1 - level) / 2`` (ranks 50 and 1949 of 2000 for 95 %). Deterministic for a given
    ``values``, ``rounds`` and ``seed``.
    """
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if rounds < 1 or not 0 < level < 1:
        raise ValueError(f"bad bootstrap settings: rounds={rounds}, level={level}")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(rounds))
    tail = (1 - level) / 2
    lo = min(rounds - 1, round(tail * rounds))
    hi = max(lo, round((1 - tail) * rounds) - 1)
    return means[lo], means[hi]
