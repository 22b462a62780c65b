"""Batch-level vLLM logits processor: Linear Alignment on paired rows, one token for both.

For every LA pair whose two rows are in the batch, the aligned logits
(``service.alignment.linear_alignment``) are computed from the principle row (``l_in``) and the
plain row (``l_out``); the token is drawn once with the request's own sampling settings and
generator, and both rows are forced to it (0 at the token, -inf elsewhere), so vLLM's sampler —
greedy for paired rows — emits the same token on both. Whether that token is *committed* is the
scheduler's call (``scheduler.PairedScheduler``): a row can be present while its partner is only
part-way through a prefill chunk, and then both tokens are discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from ...alignment.linear_alignment import LinearAlignmentConfig, linear_alignment_step
from ...alignment.sampling import SamplingParams as Sampling
from ...alignment.sampling import make_generator, select_token
from .pairing import EXTRA_KEY, pair_tag


@dataclass
class _Row:
    pair: str
    role: str
    la: LinearAlignmentConfig | None
    sampling: Sampling
    generator: torch.Generator | None = None


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
        self.device = device
        self.rows: dict[int, _Row] = {}
        self._plan: tuple[torch.Tensor, torch.Tensor, list[_Row]] | None = None
        self._top = -1  # largest row index in the plan (kept on the host: no device sync)
        self._dirty = True

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for i in batch_update.removed:
            self.rows.pop(i, None)
        for index, params, _prompt, _out in batch_update.added:
            tag = pair_tag(params.extra_args) if params is not None else None
            if tag is None:
                self.rows.pop(index, None)
                continue
            args = (params.extra_args or {})[EXTRA_KEY]
            la = la_from_args(args) if tag[1] == "principle" else None
            self.rows[index] = _Row(tag[0], tag[1], la, sampling_from_args(args))
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                self.rows[a] = rb
        self._dirty = True

    def _pairs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, list[_Row]] | None:
        if self._dirty:
            by_pair: dict[str, dict[str, int]] = {}
            for idx, row in self.rows.items():
                by_pair.setdefault(row.pair, {})[row.role] = idx
            plain, princ, infos = [], [], []
            for roles in by_pair.values():
                if "plain" in roles and "principle" in roles:
                    plain.append(roles["plain"])
                    princ.append(roles["principle"])
                    infos.append(self.rows[roles["principle"]])
            self._plan = None
            if infos:
                self._plan = (torch.tensor(plain, device=self.device), torch.tensor(princ, device=self.device), infos)
                self._top = max(plain + princ)
            self._dirty = False
        if self._plan is not None and self._top >= batch:
            return None
        return self._plan

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        plan = self._pairs(logits.shape[0])
        if plan is None:
            return logits
        plain, princ, infos = plan
        step = linear_alignment_step(logits[princ], logits[plain], [r.la for r in infos])  # type: ignore[misc]
        tokens = step.logits.argmax(dim=-1)
        for j, row in enumerate(infos):
            if not row.sampling.greedy:
                if row.generator is None:
                    row.generator = make_generator(row.sampling.seed, self.device)
                tokens[j] = select_token(step.logits[j], row.sampling, row.generator)
        rows = torch.cat([plain, princ])
        chosen = torch.cat([tokens, tokens])
        logits.index_fill_(0, rows, float("-inf"))
        logits[rows, chosen] = 0.0
        return logits
