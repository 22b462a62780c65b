"""A histogram for observations made once per generated token, without a lock per observation.

prometheus_client's ``Histogram.observe`` takes two mutexes (the sum and the bucket), and the
inter-token latency is observed for every token of every stream, on the engine's thread while the
event loop also wants the GIL: at 256 streams those increments were ~11 % of the server's
GIL-holding samples (``bench/results/http_overhead_loops_cpu.md``). Here each writing thread counts
into its own bucket array (a ``threading.local`` shard: no two threads ever write the same list),
and a scrape adds the shards up. A scrape that races a write may see that one observation in the
bucket but not yet in the sum; counts never go backwards.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _Shard:
    __slots__ = ("counts", "total")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n
        self.total = 0.0


class TokenHistogram(Collector):
    """A label-less Prometheus histogram (``<name>_bucket``, ``_count``, ``_sum``) for hot paths."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name, self.documentation, self.bounds = name, documentation, bounds
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._lock = threading.Lock()  # only to add a thread's shard, once per thread
        registry.register(self)

    def _shard(self) -> _Shard:
        shard = _Shard(len(self.bounds))
        with self._lock:
            self._shards.append(shard)
        self._local.shard = shard
        return shard

    def observe(self, value: float) -> None:
        shard: _Shard | None = getattr(self._local, "shard", None)
        if shard is None:
            shard = self._shard()
        shard.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: the first bound >= value
        shard.total += value

    def snapshot(self) -> tuple[list[int], float]:
        """Per-bucket counts (not cumulative) and the sum, over every thread's shard."""
        with self._lock:
            shards = list(self._shards)
        counts = [0] * len(self.bounds)
        total = 0.0
        for s in shards:
            for i, c in enumerate(s.counts):
                counts[i] += c
            total += s.total
        return counts, total

    def collect(self) -> Iterator[Metric]:
        counts, total = self.snapshot()
        cumulative, running = [], 0
        for bound, c in zip(self.bounds, counts, strict=True):
            running += c
            cumulative.append((floatToGoString(bound), running))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=total)
