"""Set-up the vLLM suites share: prompts, request builder, steering vectors, device, results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bench.harness import Provenance, device_label, write_results
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec, SteeringVector
from service.engines.base import GenerationRequest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
# how the GPU host runs Python (bench/gpu/setup_vllm_host.sh installs vLLM into /tmp/site)
GPU_PYTHON = "PYTHONPATH=$PWD:/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 python3"
SETUP_NOTE = "Reproduce on a GPU host after `bench/gpu/setup_vllm_host.sh`."
PRINCIPLE = "Answer like a pirate: colourful, short, and always mention the sea."
WRITING = [
    "Write a short story about a dragon who learns to cook.", "Explain how a hash map works.",
    "Describe the water cycle for a ten-year-old.", "What are the pros and cons of remote work?",
    "Give me three tips for writing clean Python code.", "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet in three sentences.", "How do vaccines work?",
]
CUDAGRAPH_SIZES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]


def prompts(n: int) -> list[str]:
    """The first ``n`` of: the writing prompts, the multilingual prompts, the fact questions."""
    facts = [f[0] for f in json.loads((DATA / "facts.json").read_text())["facts"]]
    multi = [p["prompt"] for p in json.loads((DATA / "multilingual_prompts.json").read_text())]
    return (WRITING + multi + facts)[:n]


def steering_vectors(hidden: int, head_dim: int) -> tuple[SteeringVector, ...]:
    """Two fixed random vectors (seed 7): a residual one on layer 12, a head one on layer 8 head 5."""
    g = torch.Generator().manual_seed(7)
    return (
        SteeringVector(layer=12, vector=torch.randn(hidden, generator=g) * 0.6),
        SteeringVector(layer=8, head=5, vector=torch.randn(head_dim, generator=g) * 2.0),
    )


def request(i: int, text: str, max_tokens: int, la: LinearAlignmentConfig | None = None,
            steer: tuple[SteeringVector, ...] = (), ignore_eos: bool = False,
            on_token: Any = None) -> GenerationRequest:
    return GenerationRequest(f"r{i}", [{"role": "user", "content": text}],
                             SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos),
                             AlignmentSpec(la=la, steering=steer), on_token=on_token)


def model_label(model: str) -> str:
    """``rand-7b (Qwen2, 28 layers, hidden 3584, bfloat16)`` from the folder's config.json."""
    try:
        cfg = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return Path(model).name
    arch = (cfg.get("architectures") or ["?"])[0].removesuffix("ForCausalLM")
    return (f"{Path(model).name} ({arch}, {cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
            f"{cfg.get('torch_dtype') or cfg.get('dtype') or '?'})")


def device_name() -> str:
    return device_label(None)


def provenance() -> Provenance:
    """This run's provenance, its command written as the GPU host runs it."""
    return Provenance.collect(device_name(), python=GPU_PYTHON)


def write(out: Path, name: str, payload: dict[str, Any], md: str, prov: Provenance | None = None) -> Path:
    """``out/<name>_<tag>.json`` and ``.md`` (with the GPU-host note), printed; returns the stem."""
    md = md.rstrip("\n") + "\n\n" + SETUP_NOTE + "\n"
    prov = prov or provenance()
    stem = write_results(out, name, payload, md, prov)
    print(md + "\n" + prov.footer(), flush=True)
    return stem
