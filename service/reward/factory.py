"""Build the configured reward-model runner (or none) from ``Settings``."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import Settings
from ..models.provision import resolve_model
from .embedded_rm import EMBEDDED_RM_PREFIX, SHIPPED_HEAD, build_rm_folder
from .reward_model import RewardModelRunner

log = logging.getLogger(__name__)


def resolve_reward_model(settings: Settings) -> tuple[str, str] | None:
    """``(folder or hub id, display name)`` for ``--reward-model``, or None when there is none.

    ``auto`` means the shipped head when the served model is the embedded one it was trained on
    (a head is tied to its base model's hidden states), and no reward model otherwise."""
    spec = settings.reward_model.strip()
    if spec == "none" or (spec == "auto" and settings.model != SHIPPED_HEAD.base_model):
        return None
    if spec in ("auto", EMBEDDED_RM_PREFIX):
        base = Path(resolve_model(SHIPPED_HEAD.base_model, settings.home, progress=lambda m: log.info(m)))
        folder = build_rm_folder(base, SHIPPED_HEAD.path, settings.home / "models" / SHIPPED_HEAD.name)
        return str(folder), SHIPPED_HEAD.name
    return spec, spec


def build_reward_model(settings: Settings) -> RewardModelRunner | None:
    resolved = resolve_reward_model(settings)
    if resolved is None:
        return None
    path, name = resolved
    log.info("loading reward model", extra={"model": name, "backend": settings.backend})
    if settings.backend == "vllm":
        from .reward_model import VLLMRewardModel, VLLMRewardSettings

        if settings.gpu_memory_utilization + settings.reward_gpu_memory_utilization > 0.98:
            raise ValueError("--gpu-memory-utilization plus --reward-gpu-memory-utilization must stay <= 0.98 "
                             "(generator and reward model share the GPU)")
        dtype = "bfloat16" if settings.dtype == "auto" else settings.dtype
        vs = VLLMRewardSettings(gpu_memory_utilization=settings.reward_gpu_memory_utilization,
                                max_model_len=settings.max_model_len, dtype=dtype)
        return VLLMRewardModel(path, vs, max_pending=settings.max_queue, name=name)
    from .reward_model import TransformersRewardModel

    return TransformersRewardModel(path, device=settings.device, dtype=settings.dtype,
                                   max_length=settings.max_model_len, max_pending=settings.max_queue, name=name)
