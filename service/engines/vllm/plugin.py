"""vLLM general-plugin entry point (``vllm.general_plugins``): registers the steerable Qwen2.

vLLM loads general plugins in every process it starts (engine core, workers), which is why the
architecture is registered here and not in the API process.
"""

from __future__ import annotations


def register() -> None:
    from vllm import ModelRegistry

    from .model import ARCH

    if ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCH, "service.engines.vllm.model:SteerableQwen2ForCausalLM")
