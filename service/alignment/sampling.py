"""Token selection for a batch of rows, each with its own temperature, top-k, top-p and seed.

Everything is batched over rows with the per-row settings held as tensors (``SamplingBatch``, built
once per batch composition), and nothing here waits for the device during a step: no
``.item()``/``.tolist()``/``bool(tensor)`` on an accelerator. Greedy rows take the argmax; sampled
rows use the exponential race — ``argmax(p / E)`` with ``E ~ Exp(1)`` i.i.d. draws token ``i`` with
probability ``p_i`` exactly (the same draw ``torch.multinomial`` makes, without its host sync). A
seeded row fills its own noise row from its own generator, so its tokens depend only on its seed
and its logits, never on which other rows share the batch. Rows that are entirely ``-inf`` never
occur: every filter keeps at least the best token.

``nucleus_mask`` is the one top-p implementation (the request's top-p here, Linear Alignment's
plausibility constraint in ``linear_alignment``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .device_tensor import device_tensor
from .nucleus_threshold import ENV as THRESHOLD_ENV
from .nucleus_threshold import available as threshold_available
from .nucleus_threshold import nucleus_threshold

# Below this, logits / T overflows float32 for ordinary logit gaps; such a T means "greedy" anyway.
MIN_TEMPERATURE = 1e-5
# Tokens read by the nucleus fast path (host-side decision, CPU only; see ``nucleus_mask``).
NUCLEUS_FAST_K = 64


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0 (or below MIN_TEMPERATURE) = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # benchmarks: decode exactly max_tokens

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` — the device of the logits it will sample (a CPU generator cannot
    fill a CUDA tensor). ``seed=None`` seeds it from the OS."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when the index is left open."""
    da, db = torch.device(a), torch.device(b)
    return da.type == db.type and (da.index is None or db.index is None or da.index == db.index)


def row_generator(params: SamplingParams, device: torch.device | str) -> torch.Generator | None:
    """The generator a request keeps for its whole decode: only seeded, sampled rows have one;
    unseeded rows draw from the device's default generator."""
    if params.greedy or params.seed is None:
        return None
    return make_generator(params.seed, device)


def _keep_from_sorted(sorted_probs: torch.Tensor, order: torch.Tensor, top_p: torch.Tensor,
                      shape: torch.Size) -> torch.Tensor:
    """Nucleus mask from probabilities sorted in descending order (a prefix of them is enough when
    it holds ``top_p``): keep a token while the mass strictly before it is below ``top_p``."""
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True
    mask = torch.zeros(shape, dtype=torch.bool, device=sorted_probs.device)
    return mask.scatter_(-1, order, keep_sorted)


def nucleus_mask(logits: torch.Tensor, top_p: torch.Tensor, temperature: torch.Tensor | None = None,
                 fast_k: int = NUCLEUS_FAST_K, sync_free: bool | None = None) -> torch.Tensor:
    """Boolean mask ``[batch, vocab]`` of the top-p nucleus of ``softmax(logits / T)`` per row.

    A token is kept when the probability mass strictly before it (in descending order) is below
    ``top_p``; the most likely token is always kept; ``top_p >= 1`` keeps every token.

    Two exact paths, the same mask (up to the order of exactly tied probabilities):

    * ``sync_free`` (the default on accelerators): on CUDA with Triton, a per-row threshold from the
      ``fast_k`` most likely tokens, and for the rows they do not cover a bisection kernel that the
      device itself skips for covered rows (``nucleus_threshold``; every token tied with the last
      one kept is kept); without Triton one full sort per step, decided on nothing.
    * host (the default on CPU, where reading a tensor waits for nothing): the nucleus is read from
      the ``fast_k`` most likely tokens, and only rows whose top-k holds less than ``top_p`` are
      fully sorted — a full-vocabulary sort is by far the most expensive part of a step on CPU.
    """
    x = logits.float()
    if temperature is not None:
        x = x / temperature.float().unsqueeze(-1)
    return nucleus_mask_of_probs(torch.softmax(x, dim=-1), top_p, fast_k, sync_free)


def threshold_path(probs: torch.Tensor) -> bool:
    """The sync-free nucleus without a sort (``nucleus_threshold``): on CUDA with Triton;
    ``ALIGNSERVE_NUCLEUS_TRITON=force`` also on CPU (tests, under ``TRITON_INTERPRET=1``), ``=0`` never."""
    switch = os.environ.get(THRESHOLD_ENV)
    if switch is not None and switch in ("0", "force"):
        return switch == "force"
    return probs.is_cuda and threshold_available()


def nucleus_mask_of_probs(probs: torch.Tensor, top_p: torch.Tensor, fast_k: int = NUCLEUS_FAST_K,
                          sync_free: bool | None = None) -> torch.Tensor:
    """``nucleus_mask`` of an already computed ``softmax`` (float32)."""
    p = top_p.float().unsqueeze(-1)
    if sync_free is None:
        sync_free = probs.device.type != "cpu"
    vocab = probs.shape[-1]
    if sync_free and fast_k < vocab and threshold_path(probs):
        return probs >= nucleus_threshold(probs, top_p, fast_k).unsqueeze(-1)
    if sync_free or fast_k >= vocab:
        p = torch.where(p >= 1.0, float("inf"), p)  # top_p >= 1: every token's mass before is below it
        return _keep_from_sorted(*probs.sort(dim=-1, descending=True), p, probs.shape)
    top, order = probs.topk(fast_k, dim=-1)
    mask = _keep_from_sorted(top, order, p, probs.shape)
    everything = (p >= 1.0).squeeze(-1)
    # covered: the top-k already holds top_p, so every later token has mass_before >= top_p
    uncovered = ((top.cumsum(-1)[:, -1] < p.squeeze(-1)) & ~everything).nonzero().squeeze(-1)
    if uncovered.numel():
        sub = probs.index_select(0, uncovered)
        full = _keep_from_sorted(*sub.sort(dim=-1, descending=True), p.index_select(0, uncovered), sub.shape)
        mask.index_copy_(0, uncovered, full)
    if bool(everything.any()):
        mask[everything] = True
    return mask


def top_k_mask(logits: torch.Tensor, top_k: torch.Tensor, max_k: int) -> torch.Tensor:
    """Keep the ``top_k`` highest logits per row (ties with the k-th kept); ``top_k <= 0`` keeps all.
    ``max_k`` is the largest active k of the batch, known on the host."""
    vocab = logits.shape[-1]
    k = min(max_k, vocab)
    values = logits.topk(k, dim=-1).values
    kth = values.gather(-1, (top_k.clamp(1, k) - 1).unsqueeze(-1))
    kth = torch.where((top_k <= 0).unsqueeze(-1), float("-inf"), kth)
    return logits >= kth


@dataclass(frozen=True)
class SamplingBatch:
    """Per-row sampling settings of one batch composition, as device tensors.

    Built when rows join or leave (``build``), reused for every step in between. Settings are
    stored only for the sampled rows (greedy rows need none); those are ordered unseeded first,
    then seeded, so the unseeded noise is one contiguous fill.
    """

    size: int
    sampled_rows: torch.Tensor  # [S] long: positions of the sampled rows in the batch
    temperature: torch.Tensor  # [S] float32
    top_k: torch.Tensor  # [S] long, 0 = off
    top_p: torch.Tensor  # [S] float32
    n_unseeded: int
    generators: tuple[torch.Generator, ...]  # the seeded rows', in order after the unseeded
    max_top_k: int  # 0 when no row uses top-k
    any_top_p: bool
    all_sampled_in_order: bool  # sampled_rows == arange(size): no gather, no greedy rows

    @classmethod
    def build(cls, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None],
              device: torch.device | str) -> SamplingBatch:
        if len(params) != len(generators):
            raise ValueError("one generator slot per row")
        unseeded = [i for i, p in enumerate(params) if not p.greedy and generators[i] is None]
        seeded = [i for i, p in enumerate(params) if not p.greedy and generators[i] is not None]
        order = unseeded + seeded
        gens: list[torch.Generator] = []
        for i in seeded:
            gen = generators[i]
            assert gen is not None
            if not same_device(gen.device, device):
                raise ValueError(f"row {i}: generator on {gen.device}, logits on {device}")
            gens.append(gen)
        chosen = [params[i] for i in order]
        return cls(
            size=len(params),
            sampled_rows=device_tensor(order, torch.long, device),
            temperature=device_tensor([p.temperature for p in chosen], torch.float32, device),
            top_k=device_tensor([p.top_k for p in chosen], torch.long, device),
            top_p=device_tensor([p.top_p for p in chosen], torch.float32, device),
            n_unseeded=len(unseeded), generators=tuple(gens),
            max_top_k=max((p.top_k for p in chosen), default=0),
            any_top_p=any(p.top_p < 1.0 for p in chosen),
            all_sampled_in_order=order == list(range(len(params))),
        )

    @property
    def all_greedy(self) -> bool:
        return not self.n_unseeded and not self.generators


def sampling_weights(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                     max_top_k: int, any_top_p: bool, sync_free: bool | None = None) -> torch.Tensor:
    """What a sampled row draws from, up to a per-row factor: ``softmax`` of ``logits / T`` after
    top-k, restricted to its top-p nucleus (of the top-k-renormalised distribution). The race is
    invariant to scaling a row, so the nucleus is not renormalised (``sampling_probs`` is)."""
    x = logits.float() / temperature.float().unsqueeze(-1)
    if max_top_k > 0:
        x = x.masked_fill_(~top_k_mask(x, top_k, max_top_k), float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if any_top_p:
        probs = probs.masked_fill_(~nucleus_mask_of_probs(probs, top_p, sync_free=sync_free), 0.0)
    return probs


def sampling_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                   max_top_k: int, any_top_p: bool, sync_free: bool | None = None) -> torch.Tensor:
    """The distribution a sampled row draws from (``sampling_weights`` normalised)."""
    w = sampling_weights(logits, temperature, top_k, top_p, max_top_k, any_top_p, sync_free)
    return w / w.sum(dim=-1, keepdim=True)


def exponential_race(weights: torch.Tensor, n_unseeded: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One categorical draw per row, proportional to ``weights``: ``argmax(w / E)``, ``E ~ Exp(1)``.
    Rows ``[:n_unseeded]`` use the device's default generator, row ``n_unseeded + j`` uses
    ``generators[j]``. ``E = -log(U)``: the same law as ``exponential_``, several times faster on CPU."""
    noise = torch.empty_like(weights)
    if n_unseeded:
        noise[:n_unseeded].uniform_()
    for j, gen in enumerate(generators):
        noise[n_unseeded + j].uniform_(generator=gen)
    noise.log_().neg_()  # U in [0, 1): E in (0, inf]; E = inf only gives w / E = 0
    # guard E = 0 anyway (a backend whose U can reach 1): 0/0 would be NaN, which argmax would pick
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)
    return (weights / noise).argmax(dim=-1)


def sample(logits: torch.Tensor, batch: SamplingBatch, sync_free: bool | None = None) -> torch.Tensor:
    """One token per row ``[batch]`` (long, on the logits' device). ``sync_free`` as in
    ``nucleus_mask`` (default: on accelerators)."""
    if logits.shape[0] != batch.size:
        raise ValueError(f"logits have {logits.shape[0]} rows, sampling settings {batch.size}")
    if batch.all_greedy:
        return logits.argmax(dim=-1)
    sub = logits if batch.all_sampled_in_order else logits.index_select(0, batch.sampled_rows)
    weights = sampling_weights(sub, batch.temperature, batch.top_k, batch.top_p, batch.max_top_k,
                               batch.any_top_p, sync_free)
    drawn = exponential_race(weights, batch.n_unseeded, batch.generators)
    if batch.all_sampled_in_order:
        return drawn
    return logits.argmax(dim=-1).index_copy_(0, batch.sampled_rows, drawn)
