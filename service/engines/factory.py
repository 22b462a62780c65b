"""Build the configured engine (the API only sees the ``Engine`` protocol)."""

from __future__ import annotations

import logging

from ..config import Settings
from ..models.provision import resolve_model
from .base import Engine

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    path = resolve_model(settings.model, settings.home, progress=lambda m: log.info(m))
    if settings.backend == "vllm":
        from .vllm.engine import VLLMEngine, VLLMSettings

        log.info("loading model", extra={"model": path, "backend": "vllm"})
        dtype = "bfloat16" if settings.dtype == "auto" else settings.dtype
        vs = VLLMSettings(max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs,
                          gpu_memory_utilization=settings.gpu_memory_utilization, dtype=dtype,
                          num_gpu_blocks=settings.kv_cache_blocks,
                          compile_concurrency=settings.compile_concurrency,
                          pairing=settings.vllm_pairing != "off", pair_async=settings.vllm_pairing == "async")
        return VLLMEngine(path, vs,
                          default_system=settings.default_system_prompt)
    from transformers.utils import logging as hf_logging

    from .transformers.engine import TransformersEngine

    hf_logging.disable_progress_bar()

    log.info("loading model", extra={"model": path, "backend": settings.backend, "device": settings.device})
    return TransformersEngine(path, device=settings.device, dtype=settings.dtype,
                              max_model_len=settings.max_model_len,
                              default_system=settings.default_system_prompt)
