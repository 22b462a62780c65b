"""The per-token histogram: the same exposition as prometheus_client's Histogram, from many threads."""

from __future__ import annotations

import random
import threading

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.metrics.prometheus import ITL_BUCKETS
from service.metrics.token_histogram import TokenHistogram


def _samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(name) and not line.startswith(f"{name}_created"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_exposition_equals_prometheus_client_histogram() -> None:
    values = [0.0005, 0.001, 0.003, 0.0099, 0.01, 0.5, 3.0, 100.0, 0.001, 2.56]  # bounds themselves included
    ours, ref = CollectorRegistry(), CollectorRegistry()
    fast = TokenHistogram("x_seconds", "doc", ITL_BUCKETS, ours)
    slow = Histogram("x_seconds", "doc", buckets=ITL_BUCKETS, registry=ref)
    for v in values:
        fast.observe(v)
        slow.observe(v)
    got, want = _samples(ours, "x_seconds"), _samples(ref, "x_seconds")
    assert got == want and want['x_seconds_bucket{le="0.001"}'] == 3 and want["x_seconds_count"] == 10


def test_observations_from_many_threads_are_all_counted() -> None:
    reg = CollectorRegistry()
    h = TokenHistogram("t_seconds", "doc", (0.01, 0.1), reg)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20_000):
            h.observe(rng.random() * 0.2)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    scrapes = [_samples(reg, "t_seconds")["t_seconds_count"] for _ in range(20)]  # scraping while writing
    for t in threads:
        t.join()
    counts, total = h.snapshot()
    assert sum(counts) == 80_000 and _samples(reg, "t_seconds")["t_seconds_count"] == 80_000
    assert scrapes == sorted(scrapes)  # never goes backwards
    assert 0.09 * 80_000 < total < 0.11 * 80_000  # uniform on [0, 0.2): mean 0.1
