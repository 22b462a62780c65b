"""Batch-level vLLM logits processor: Linear Alignment on paired rows, one token for both.

A thin adapter: the state and the step are ``la_batch.PairedRows`` (pure torch, tested without
vLLM). For every LA pair whose two rows are in the batch, the aligned logits are computed from the
principle row (``l_in``) and the plain row (``l_out``) and one token is drawn with the request's
settings (``service.alignment.decoding``, the code the transformers engine runs); both rows are
forced to it, so vLLM's sampler — greedy for paired rows — emits it on both. A paired row that
cannot be aligned this step is forced to a role-specific token, which the scheduler
(``scheduler.PairedScheduler`` / ``AsyncPairedScheduler``) discards; whether a token is committed
is always the scheduler's call.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from ...alignment.linear_alignment import LinearAlignmentConfig
from ...alignment.nucleus_threshold import warm_up
from ...alignment.sampling import SamplingParams as Sampling
from ...alignment.sampling import row_generator
from .la_batch import GeneratorBook, PairedRow, PairedRows
from .pairing import EXTRA_KEY, pair_tag


def la_from_args(tag: dict[str, Any]) -> LinearAlignmentConfig:
    return LinearAlignmentConfig(**tag["la"])


def sampling_from_args(tag: dict[str, Any]) -> Sampling:
    s = tag.get("sampling", {})
    return Sampling(max_tokens=1, temperature=float(s.get("temperature", 0.0)), top_p=float(s.get("top_p", 1.0)),
                    top_k=int(s.get("top_k", 0)), seed=s.get("seed"))


class PairedLinearAlignment(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        tag = pair_tag(sampling_params.extra_args)
        if tag is None:
            return
        args = (sampling_params.extra_args or {})[EXTRA_KEY]
        if tag[1] == "principle":
            la_from_args(args)  # raises ValueError on bad settings
        if sampling_params.temperature != 0.0:
            raise ValueError("paired LA rows must be greedy in vLLM; the processor samples")

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.state = PairedRows(device)
        self.generators = GeneratorBook()
        warm_up(device)  # the sort-free nucleus kernel, compiled before the first LA request

    def is_argmax_invariant(self) -> bool:
        return False

    def _row(self, params: SamplingParams | None) -> PairedRow | None:
        tag = pair_tag(params.extra_args) if params is not None else None
        if tag is None or params is None:
            return None
        args = (params.extra_args or {})[EXTRA_KEY]
        sampling = sampling_from_args(args)
        la = la_from_args(args) if tag[1] == "principle" else None
        # the pair draws once, from the principle row; the same generator when the row rejoins the batch
        gen = None
        if la is not None:
            gen = self.generators.get(tag[0], lambda: row_generator(sampling, self.state.device))
        return PairedRow(tag[0], tag[1], la, sampling, gen)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:  # the batch did not change: nothing to rebuild
            return
        self.state.update(
            batch_update.removed,
            [(index, self._row(params)) for index, params, _prompt, _out in batch_update.added],
            [(a, b, direction == MoveDirectionality.SWAP) for a, b, direction in batch_update.moved],
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.state.apply(logits)
