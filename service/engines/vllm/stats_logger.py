"""A vLLM stat logger that copies the engine's scheduler stats into alignserve's ``EngineStats``.

vLLM's own Prometheus logger writes to the process-global registry with ``vllm:`` names; the
service exports one registry per app, so the few figures operators watch (running and waiting
sequences, KV-cache usage, preemptions, prefix-cache hits) are taken from the same per-step
``record`` call and exported under alignserve's names. ``record`` runs on the AsyncLLM output
handler, i.e. on the engine's event-loop thread.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

from ..base import EngineStats


class EngineStatsLogger(StatLoggerBase):
    def __init__(self, vllm_config: Any, engine_index: int = 0, *, sink: EngineStats) -> None:
        self.sink = sink

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        preempted = int(getattr(iteration_stats, "num_preempted_reqs", 0) or 0) if iteration_stats else 0
        if scheduler_stats is None:
            self.sink.preemptions += preempted
            return
        cache = scheduler_stats.prefix_cache_stats
        self.sink.record_step(int(scheduler_stats.num_running_reqs), int(scheduler_stats.num_waiting_reqs),
                              float(scheduler_stats.kv_cache_usage), preempted,
                              int(cache.queries) if cache is not None else 0,
                              int(cache.hits) if cache is not None else 0)

    def log_engine_initialized(self) -> None:
        pass
