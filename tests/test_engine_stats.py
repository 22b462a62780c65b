"""Engine stats on /metrics: step accounting, the scrape-time collector, the vLLM stat logger."""

from __future__ import annotations

import math

import pytest

from service.engines.base import EngineStats
from service.metrics.prometheus import Metrics


def samples(m: Metrics) -> dict[str, float]:
    out = {}
    for line in m.exposition().decode().splitlines():
        if line.startswith("alignserve_engine_") and not line.startswith("alignserve_engine_live"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_record_step_replaces_gauges_and_advances_counters() -> None:
    s = EngineStats()
    assert math.isnan(s.kv_cache_usage)
    s.record_step(running=10, waiting=3, kv_cache_usage=0.5, preempted=2, cache_queries=100, cache_hits=60)
    s.record_step(running=4, waiting=0, kv_cache_usage=0.25, preempted=1, cache_queries=50, cache_hits=50)
    assert (s.running_sequences, s.waiting_sequences, s.kv_cache_usage) == (4, 0, 0.25)
    assert (s.preemptions, s.prefix_cache_queries, s.prefix_cache_hits) == (3, 150, 110)


def test_collector_reads_the_engine_at_scrape_time() -> None:
    live = EngineStats(kv_cache_usage=0.0)
    m = Metrics()
    m.watch_engine(lambda: live)
    assert samples(m)["alignserve_engine_running_sequences"] == 0
    live.record_step(running=7, waiting=2, kv_cache_usage=0.75, preempted=5, cache_queries=40, cache_hits=30)
    got = samples(m)
    assert got == {
        "alignserve_engine_running_sequences": 7, "alignserve_engine_waiting_sequences": 2,
        "alignserve_engine_kv_cache_usage_ratio": 0.75, "alignserve_engine_preemptions_total": 5,
        "alignserve_engine_prefix_cache_queries_total": 40, "alignserve_engine_prefix_cache_hits_total": 30,
    }


def test_a_failing_engine_does_not_break_the_scrape() -> None:
    def broken() -> EngineStats:
        raise RuntimeError("engine gone")

    m = Metrics()
    m.watch_engine(broken)
    text = m.exposition().decode()
    assert "alignserve_queue_depth" in text and "alignserve_engine_running_sequences" not in text


def test_vllm_stat_logger_feeds_engine_stats() -> None:
    pytest.importorskip("vllm")
    from vllm.v1.metrics.stats import IterationStats, PrefixCacheStats, SchedulerStats

    from service.engines.vllm.stats_logger import EngineStatsLogger

    sink = EngineStats(kv_cache_usage=0.0)
    logger = EngineStatsLogger(None, 0, sink=sink)
    it = IterationStats()
    it.num_preempted_reqs = 2
    cache = PrefixCacheStats()
    cache.record(num_tokens=64, num_hits=48, preempted=False)
    logger.record(SchedulerStats(num_running_reqs=5, num_waiting_reqs=1, kv_cache_usage=0.4,
                                 prefix_cache_stats=cache), it)
    logger.record(None, it)
    assert (sink.running_sequences, sink.waiting_sequences, sink.kv_cache_usage) == (5, 1, 0.4)
    assert (sink.preemptions, sink.prefix_cache_queries, sink.prefix_cache_hits) == (4, 64, 48)
