"""The vLLM logits processor's state and step, in pure torch (no vLLM import; ``logits.py`` adapts it).

vLLM's persistent batch tells the processor which request sits at which row only when that
changes (``update_state``: rows added, removed, moved). ``PairedRows`` mirrors it and rebuilds the
step's tensors — pair row indices, per-pair LA and sampling settings (``decoding.DecodePlan``) —
only then; a step is one ``decode_step`` plus one forced token per row.

Every paired row is forced to one token (0 at it, -inf elsewhere; paired rows are greedy for vLLM's
sampler). A pair with both rows in the step's logits gets its aligned token on both. Every other
paired row — its partner unknown, or at a row index beyond this step's logits — is forced to a
token fixed by its role (``VETO_TOKEN``): the two rows of a pair can then never agree unless both
were aligned together; the scheduler discards such a row's token (``pairing.lone_steps``), and the
other pairs proceed normally. (Leaving such rows to their own logits would let two greedy rows that happen to
share an argmax commit a token that was never aligned.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from ...alignment.decoding import DecodePlan, DecodeRow, decode_step
from ...alignment.device_tensor import device_tensor
from ...alignment.linear_alignment import LinearAlignmentConfig
from ...alignment.sampling import SamplingParams

# Forced on a paired row that cannot be aligned this step; different per role, so never agreeing.
VETO_TOKEN = {"plain": 0, "principle": 1}


@dataclass
class PairedRow:
    pair: str
    role: str  # "plain" | "principle"
    la: LinearAlignmentConfig | None  # on the principle row
    sampling: SamplingParams
    generator: torch.Generator | None = None  # seeded sampled rows, on the logits' device


class GeneratorBook:
    """A seeded LA pair's generator for its whole decode, across its rows leaving and rejoining
    vLLM's persistent batch (held by the pair scheduler, preempted): re-creating it on re-admission
    would replay the seed's first draws. Pair ids are unique per request; a finished pair's
    generator is simply forgotten once ``capacity`` newer pairs have one."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._gens: OrderedDict[str, torch.Generator] = OrderedDict()

    def get(self, pair: str, make: Callable[[], torch.Generator | None]) -> torch.Generator | None:
        gen = self._gens.get(pair)
        if gen is not None:
            self._gens.move_to_end(pair)
            return gen
        gen = make()
        if gen is not None:
            self._gens[pair] = gen
            while len(self._gens) > self.capacity:
                self._gens.popitem(last=False)
        return gen

    def __len__(self) -> int:
        return len(self._gens)


@dataclass(frozen=True)
class PairLayout:
    """Host decision of one step: which rows pair up, which are forced to their veto token."""

    pairs: list[tuple[int, int]]  # (plain row, principle row), both < batch
    vetoed: list[tuple[int, int]]  # (row, forced token), row < batch


def pair_layout(roles: Mapping[int, tuple[str, str]], batch: int) -> PairLayout:
    """``roles``: row index -> (pair, role) for every paired row vLLM has told us about."""
    by_pair: dict[str, dict[str, int]] = {}
    for idx, (pair, role) in roles.items():
        by_pair.setdefault(pair, {})[role] = idx
    pairs: list[tuple[int, int]] = []
    vetoed: list[tuple[int, int]] = []
    for members in by_pair.values():
        plain, princ = members.get("plain"), members.get("principle")
        if plain is not None and princ is not None and plain < batch and princ < batch:
            pairs.append((plain, princ))
            continue
        vetoed.extend((idx, VETO_TOKEN[role]) for role, idx in members.items() if idx < batch)
    return PairLayout(pairs, vetoed)


@dataclass(frozen=True)
class _StepTensors:
    plan: DecodePlan | None  # None: no complete pair this step
    forced_rows: torch.Tensor  # [F] long: plain rows, principle rows, vetoed rows
    veto_tokens: torch.Tensor  # [V] long


def force_tokens(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """In place: row ``rows[i]`` becomes 0 at ``tokens[i]`` and -inf elsewhere (its argmax)."""
    logits.index_fill_(0, rows, float("-inf"))
    logits.index_put_((rows, tokens), torch.zeros((), dtype=logits.dtype, device=logits.device))
    return logits


class PairedRows:
    """Mirror of the paired rows of vLLM's persistent batch, and the LA step over them."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = device
        self.rows: dict[int, PairedRow] = {}
        self._cache: tuple[int, _StepTensors] | None = None  # (batch size, tensors) until rows change
        self.builds = 0  # how often the step tensors were rebuilt (tests, stats)

    def update(self, removed: Iterable[int], added: Iterable[tuple[int, PairedRow | None]],
               moved: Iterable[tuple[int, int, bool]]) -> None:
        """vLLM's order: removals, then additions (None: the row now holds an unpaired request),
        then moves ``(a, b, swap)`` — ``a`` to ``b``, or ``a`` and ``b`` exchanged."""
        changed = False
        for i in removed:
            changed |= self.rows.pop(i, None) is not None
        for index, row in added:
            changed |= self.rows.pop(index, None) is not None
            if row is not None:
                self.rows[index] = row
                changed = True
        for a, b, swap in moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if swap and rb is not None:
                self.rows[a] = rb
            changed |= ra is not None or rb is not None
        if changed:
            self._cache = None

    def _tensors(self, batch: int) -> _StepTensors:
        if self._cache is not None and self._cache[0] == batch:
            return self._cache[1]
        layout = pair_layout({i: (r.pair, r.role) for i, r in self.rows.items()}, batch)
        plan = None
        if layout.pairs:
            decode_rows = []
            for plain, princ in layout.pairs:
                lead = self.rows[princ]
                decode_rows.append(DecodeRow(plain, princ, lead.la, lead.sampling, lead.generator))
            plan = DecodePlan.build(decode_rows, self.device)
        forced = [p for p, _ in layout.pairs] + [q for _, q in layout.pairs] + [i for i, _ in layout.vetoed]
        tensors = _StepTensors(
            plan=plan,
            forced_rows=device_tensor(forced, torch.long, self.device),
            veto_tokens=device_tensor([t for _, t in layout.vetoed], torch.long, self.device),
        )
        self._cache = (batch, tensors)
        self.builds += 1
        return tensors

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        t = self._tensors(logits.shape[0])
        if not t.forced_rows.numel():  # host-side size: no device sync
            return logits
        chosen = [t.veto_tokens]
        if t.plan is not None:
            tokens = decode_step(logits, t.plan).tokens
            chosen = [tokens, tokens, t.veto_tokens]
        return force_tokens(logits, t.forced_rows, torch.cat(chosen))
