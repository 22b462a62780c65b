"""Steering wrapped around a loaded model's own modules (no vLLM import; works under CUDA graphs).

vLLM's LoRA support replaces linear layers, after loading and before compiling, by layers that
read per-token index tensors; steering does the same to two modules of every decoder layer
(``decoder_layout`` finds them):

* the attention out-projection (a ``RowParallelLinear``) first applies ``x * keep[slot] +
  shift[slot]`` to its input — this rank's heads' outputs — and then runs unchanged;
* the decoder layer adds ``resid[slot]`` to its output hidden states. vLLM layers return either
  the stream itself or ``(hidden, residual)`` with the stream ``hidden + residual`` (the next norm
  fuses the add), so adding to the first output adds to the stream either way. That output comes
  after the layer's all-reduces and is replicated, so every rank adds to its copy once.

The module keeps its class's code, parameters and name: its class is swapped for a subclass whose
``forward`` adds the table lookup and then calls the original. The tables and the per-token slot
index are non-persistent buffers: torch.compile traces the lookups into the graph, CUDA graphs
are captured on the buffers' addresses, and the worker rewrites their contents in place between
steps (``worker.py``). This must run before vLLM compiles and captures (``AlignserveWorker``
calls it right after loading the weights).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class SteeredOutProjection:
    """Mixin placed before an out-projection's class: head replace/add on the input columns."""

    alignserve_index: torch.Tensor
    alignserve_keep: torch.Tensor
    alignserve_shift: torch.Tensor

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        slot = self.alignserve_index[: x.shape[0]]
        x = x * self.alignserve_keep[slot] + self.alignserve_shift[slot]
        return super().forward(x, *args, **kwargs)  # type: ignore[misc]


class SteeredLayer:
    """Mixin placed before a decoder layer's class: residual vectors added to its output."""

    alignserve_index: torch.Tensor
    alignserve_resid: torch.Tensor

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)  # type: ignore[misc]
        if isinstance(out, tuple):
            h = out[0]
            return (h + self.alignserve_resid[self.alignserve_index[: h.shape[0]]], *out[1:])
        return out + self.alignserve_resid[self.alignserve_index[: out.shape[0]]]


@functools.cache
def steered_class(mixin: type, base: type) -> type:
    """``base`` with ``mixin``'s forward in front (one class per pair, so repeated layers share it)."""
    return type(f"Steered{base.__name__}", (mixin, base), {"__module__": base.__module__})


def _swap(module: nn.Module, mixin: type) -> None:
    base: Any = type(module)
    module.__class__ = steered_class(mixin, base)


@dataclass
class SteeringBuffers:
    """The persistent tensors the wrapped modules read; the worker writes them in place."""

    index: torch.Tensor  # [max tokens] slot of each token of the flattened batch
    resid: list[torch.Tensor]  # per layer [slots, hidden]
    keep: list[torch.Tensor]  # per layer [slots, width]
    shift: list[torch.Tensor]  # per layer [slots, width]

    @property
    def slots(self) -> int:
        return self.resid[0].shape[0]


def attach(layers: Sequence[nn.Module], out_projs: Sequence[nn.Module], *, max_tokens: int, slots: int,
           hidden: int, width: int, dtype: torch.dtype, device: torch.device | str) -> SteeringBuffers:
    """Wrap every layer and out-projection in place; ``width`` is the out-projection input this
    rank sees. Tables start as the identity (keep=1, shift=0, resid=0) in every slot."""
    if len(layers) != len(out_projs):
        raise ValueError("one out-projection per layer")
    index = torch.zeros(max_tokens, dtype=torch.long, device=device)
    bufs = SteeringBuffers(index, [], [], [])
    for layer, proj in zip(layers, out_projs, strict=True):
        if isinstance(layer, SteeredLayer) or isinstance(proj, SteeredOutProjection):
            raise RuntimeError("steering is already attached to this model")
        resid = torch.zeros(slots, hidden, dtype=dtype, device=device)
        keep = torch.ones(slots, width, dtype=dtype, device=device)
        shift = torch.zeros(slots, width, dtype=dtype, device=device)
        layer.register_buffer("alignserve_index", index, persistent=False)
        layer.register_buffer("alignserve_resid", resid, persistent=False)
        proj.register_buffer("alignserve_index", index, persistent=False)
        proj.register_buffer("alignserve_keep", keep, persistent=False)
        proj.register_buffer("alignserve_shift", shift, persistent=False)
        _swap(layer, SteeredLayer)
        _swap(proj, SteeredOutProjection)
        bufs.resid.append(resid)
        bufs.keep.append(keep)
        bufs.shift.append(shift)
    return bufs
