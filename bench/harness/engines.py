"""Loading the engines the benchmarks measure, with the options they use.

``transformers_engine`` is the numerical reference (CPU or GPU); ``vllm_engine`` the serving
engine, whose module is imported only when it is called, so every benchmark imports and answers
``--help`` on a machine without vLLM.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.engines.transformers.engine import TransformersEngine
    from service.engines.vllm.engine import VLLMEngine


def add_engine_args(ap: argparse.ArgumentParser, device: str = "auto", dtype: str = "auto") -> None:
    """``--model``, ``--device`` and ``--dtype`` as the transformers-engine benchmarks take them."""
    ap.add_argument("--model", default=None,
                    help="model: an HF folder or embedded:NAME (default: the embedded 0.5B model)")
    ap.add_argument("--device", default=device, help=f"auto, cpu, cuda or cuda:N (default {device})")
    ap.add_argument("--dtype", default=dtype, help=f"auto, float32, bfloat16 or float16 (default {dtype})")


def model_path(model: str | None = None, home: Path | None = None) -> str:
    """An HF folder (or hub id) for ``model``: None is the embedded model, ``embedded:NAME`` is
    provisioned under ``home`` (default: ``Settings().home``, i.e. $ALIGNSERVE_HOME or
    ~/.cache/alignserve) if it is not there yet, with progress on stderr."""
    from service.config import EMBEDDED_MODEL, Settings
    from service.models.provision import resolve_model

    home = home if home is not None else Settings().home
    return resolve_model(model or EMBEDDED_MODEL, home, progress=lambda m: print(m, file=sys.stderr))


def transformers_engine(model: str | None = None, *, home: Path | None = None, device: str = "auto",
                        dtype: str = "auto", max_model_len: int = 4096,
                        default_system: str | None = None) -> TransformersEngine:
    """``TransformersEngine`` on ``model_path(model, home)``."""
    from service.engines.transformers.engine import TransformersEngine

    return TransformersEngine(model_path(model, home), device=device, dtype=dtype,
                              max_model_len=max_model_len, default_system=default_system)


def vllm_engine(model: str, default_system: str | None = None, **settings: Any) -> VLLMEngine:
    """``VLLMEngine`` on the HF folder ``model``; ``settings`` are ``VLLMSettings`` fields."""
    from service.engines.vllm.engine import VLLMEngine, VLLMSettings

    return VLLMEngine(model, VLLMSettings(**settings), default_system=default_system)


def free_gpu() -> None:
    """Return freed engines' GPU memory before the next one loads."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
