"""The suites of ``python -m bench.vllm_bench`` and their phases.

A suite is one of the former ``bench/vllm_*.py`` scripts: its options, its phases (run in the
order given, in one process) and the results file its phases write. Suite modules are imported
only when their phases run or their help is shown, and they import vLLM only inside phases.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Suite:
    name: str
    module: str  # bench.vllm_bench.<module>: PHASES, DEFAULT, add_args(parser), run(args, phases)
    help: str
    results: tuple[str, ...]  # results file stems (before _<device>) its phases write

    def load(self) -> ModuleType:
        return importlib.import_module(f"bench.vllm_bench.{self.module}")

    @property
    def phases(self) -> dict[str, str]:
        """Phase name -> one line on what it measures."""
        return dict(self.load().PHASES)

    @property
    def default(self) -> tuple[str, ...]:
        return tuple(self.load().DEFAULT)

    def add_args(self, ap: argparse.ArgumentParser) -> None:
        self.load().add_args(ap)

    def runner(self) -> Callable[[argparse.Namespace, list[str]], int]:
        return self.load().run  # type: ignore[no-any-return]


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("gpu", "gpu", "vLLM engine vs the transformers reference: equivalence, stress, throughput",
          ("vllm_equivalence", "vllm_equivalence_float32", "vllm_stress", "vllm_throughput", "vllm_interleaved",
           "vllm_interleaved_7b", "vllm_breakdown", "vllm_profile")),
    Suite("pairs", "pairs", "LA pairing under async vs sync scheduling: equivalence, stress, interleaved tok/s",
          ("vllm_pairs_equivalence", "vllm_pairs_stress", "vllm_pairs_interleaved")),
    Suite("serve", "serve", "alignserve serve --backend vllm end to end over HTTP", ("vllm_serve",)),
    Suite("reward", "reward", "the English reward model on vLLM: pooling runner, colocated, HTTP",
          ("vllm_reward",)),
    Suite("compile", "compile", "Activation-RM compile on the vLLM engine vs the transformers reference",
          ("vllm_compile",)),
    Suite("faults", "faults", "faults over HTTP: KV budget, memory pressure, engine cores killed, CUDA OOM",
          ("vllm_faults",)),
    Suite("archs", "archs", "eight decoder families: steering, LA and head capture vs the transformers reference",
          ("vllm_archs",)),
)}
