"""Suite ``archs``: steering, LA and head capture on eight decoder families (``bench/vllm_archs.py``).

Tiny random-weight checkpoints per family are built on the GPU host; each family runs in its own
process against the transformers reference, and a tiny Llama is served over HTTP for a steered
``/generate`` and an Activation-RM compile.
"""

from __future__ import annotations

import argparse

PHASES = {"archs": "vLLM vs transformers greedy equivalence (base, residual/head steering, LA, LA+steering; "
                   "float32 and bf16) and head capture, per family; serve a tiny Llama over HTTP"}
DEFAULT = ("archs",)


def add_args(ap: argparse.ArgumentParser) -> None:
    from bench.vllm_archs import add_args as archs_args

    archs_args(ap, with_out=False)


def run(args: argparse.Namespace, phases: list[str]) -> int:
    from bench.vllm_archs import run as archs_run

    return archs_run(args)
