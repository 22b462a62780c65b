"""Prometheus metrics, one registry per app (no process-global state; tests build many apps)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..engines.base import EngineStats
from .token_histogram import TokenHistogram

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
STRENGTH_BUCKETS = (0.0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 10, 20, 50, 100)
SCORE_BUCKETS = tuple(i / 10 for i in range(11))
REWARD_BUCKETS = tuple(float(x) for x in range(-10, 11))  # reward-model logits are unbounded


def _cuda_allocated() -> float:
    import torch

    return float(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0.0


class EngineStatsCollector(Collector):
    """Reads the engine's own stats at scrape time (vLLM: running/waiting sequences, KV-cache
    usage, preemptions, prefix-cache hits, as its scheduler reports them every step)."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        try:
            s = self.stats()
        except Exception:  # a scrape must never fail because the engine is shutting down
            log.exception("engine stats unavailable")
            return
        yield GaugeMetricFamily("alignserve_engine_running_sequences",
                                "Sequences the engine is decoding (an LA request counts two)",
                                value=s.running_sequences)
        yield GaugeMetricFamily("alignserve_engine_waiting_sequences",
                                "Sequences admitted to the engine but not yet scheduled (vLLM)",
                                value=s.waiting_sequences)
        yield GaugeMetricFamily("alignserve_engine_kv_cache_usage_ratio",
                                "Fraction of KV-cache blocks in use (vLLM; NaN on the reference engine)",
                                value=s.kv_cache_usage)
        yield CounterMetricFamily("alignserve_engine_preemptions", "Sequences preempted by the engine (vLLM)",
                                  value=s.preemptions)
        yield CounterMetricFamily("alignserve_engine_prefix_cache_queries",
                                  "Prompt tokens looked up in the prefix cache (vLLM)", value=s.prefix_cache_queries)
        yield CounterMetricFamily("alignserve_engine_prefix_cache_hits",
                                  "Prompt tokens served from the prefix cache (vLLM)", value=s.prefix_cache_hits)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        self.gpu_memory = Gauge("alignserve_gpu_memory_allocated_bytes", "torch CUDA memory allocated",
                                registry=r)
        self.gpu_memory.set_function(_cuda_allocated)
        self.requests = Counter("alignserve_requests", "HTTP requests by route, status and profile",
                                ["route", "status", "profile"], registry=r)
        self.request_latency = Histogram("alignserve_request_latency_seconds", "End-to-end request latency",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("alignserve_time_to_first_token_seconds",
                              "From request arrival to the first generated token (queueing included)",
                              buckets=LATENCY_BUCKETS, registry=r)
        # observed for every token of every stream: a lock-free per-thread histogram (token_histogram.py)
        self.itl = TokenHistogram("alignserve_inter_token_latency_seconds", "Time between generated tokens",
                                  ITL_BUCKETS, r)
        self.queue_time = Histogram("alignserve_queue_time_seconds", "Time a request waited for the engine",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("alignserve_prompt_tokens", "Prompt tokens (plain stream)", registry=r)
        self.generated_tokens = Counter("alignserve_generated_tokens", "Generated tokens", ["alignment"],
                                        registry=r)
        self.la_strength = Histogram("alignserve_la_strength", "Mean Linear Alignment strength per response",
                                     ["mode"], buckets=STRENGTH_BUCKETS, registry=r)
        self.scores = Histogram("alignserve_score", "Scores returned by /score", ["method"],
                                buckets=SCORE_BUCKETS, registry=r)
        self.rewards = Histogram("alignserve_reward_model_score", "Rewards returned by /score method "
                                 "reward_model (the RM's scalar logit)", buckets=REWARD_BUCKETS, registry=r)
        self.queue_depth = Gauge("alignserve_queue_depth", "Requests waiting for the engine", registry=r)
        self.in_flight = Gauge("alignserve_requests_in_flight", "Requests being handled", ["route"], registry=r)
        self.engine_live = Gauge("alignserve_engine_live_requests", "Requests the engine is decoding now",
                                 registry=r)
        self.model_ready = Gauge("alignserve_model_ready", "1 when the model is loaded and serving", registry=r)
        self.language_checks = Counter("alignserve_language_checks", "Responses checked for language fidelity",
                                       ["profile"], registry=r)
        self.language_mismatch = Counter("alignserve_language_mismatch",
                                         "Responses not in the language of the prompt", ["profile"], registry=r)
        self.finished = Counter("alignserve_generations", "Finished generations by finish reason",
                                ["finish_reason"], registry=r)
        self.jobs = Counter("alignserve_compile_jobs", "Finished profile-compilation jobs by outcome", ["status"],
                            registry=r)
        for status in ("succeeded", "failed", "cancelled"):
            self.jobs.labels(status)  # exported at 0 from the start

    def watch_worker(self, depth: Callable[[], int], live: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))
        self.engine_live.set_function(lambda: float(live()))

    def watch_engine(self, stats: Callable[[], EngineStats]) -> None:
        self.registry.register(EngineStatsCollector(stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
