"""Head activations at the last token, read from the vLLM model (compiling Activation-RM profiles).

vLLM's compiled forward runs on the runner's batch and attention metadata and returns only the last
hidden states, so it cannot hand back per-head activations of arbitrary sequences. The capture
therefore runs the model's *own* forward eagerly, one sequence at a time, between engine steps
(the worker calls it through ``collective_rpc``; every rank runs it together, so the layers'
all-reduces match up):

* the compiled path is skipped (vLLM's ``skip_compiled`` forward context), so every module's Python
  code runs — embeddings and their scaling, norms, q/k norms, rotary, MLP or MoE, post-norms;
* only the attention kernel, which needs the KV cache and batch metadata, is swapped for
  :func:`causal_attention` over the one sequence (grouped KV heads, the layer's scale, sliding
  window and logit soft-capping), for the duration of the call;
* forward pre-hooks on the out-projections record their input at the last position — this rank's
  heads; the engine concatenates the ranks' columns (``sharding.gather_heads``).

What comes out is what ``transformers.hooks.HeadCapture`` records on the transformers engine.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int,
                     head_dim: int, scale: float, window: int | None = None,
                     softcap: float | None = None) -> torch.Tensor:
    """Causal self-attention of one sequence: ``q`` ``[T, H*D]``, ``k``/``v`` ``[T, KVH*D]`` (each
    key/value head serves ``H // KVH`` consecutive query heads) -> ``[T, H*D]``. ``window``: a
    token sees itself and the ``window - 1`` tokens before it; ``softcap``: scores become
    ``softcap * tanh(scores / softcap)``."""
    t = q.shape[0]
    group = num_heads // num_kv_heads
    qh = q.reshape(t, num_heads, head_dim).transpose(0, 1)
    kh = k.reshape(t, num_kv_heads, head_dim).transpose(0, 1).repeat_interleave(group, dim=0)
    vh = v.reshape(t, num_kv_heads, head_dim).transpose(0, 1).repeat_interleave(group, dim=0)
    pos = torch.arange(t, device=q.device)
    dist = pos[:, None] - pos[None, :]
    allowed = dist >= 0
    if window:
        allowed &= dist < window
    if softcap:
        scores = (qh.float() @ kh.float().transpose(1, 2)) * scale
        scores = softcap * torch.tanh(scores / softcap)
        scores = scores.masked_fill(~allowed, -math.inf)
        out = (scores.softmax(-1) @ vh.float()).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed, scale=scale)
    return out.transpose(0, 1).reshape(t, num_heads * head_dim)


def _attention_params(layer: Any) -> dict[str, Any]:
    """What :func:`causal_attention` needs from a vLLM ``Attention`` layer (and its backend impl)."""
    impl = getattr(layer, "impl", None)
    if getattr(impl, "alibi_slopes", None) is not None:
        raise ValueError("head capture does not support ALiBi attention")
    if getattr(layer, "head_size_v", layer.head_size) != layer.head_size:
        raise ValueError("head capture needs equal key and value head sizes")
    scale = getattr(impl, "scale", None)
    if scale is None:
        scale = getattr(layer, "scale", layer.head_size ** -0.5)
    return {"num_heads": int(layer.num_heads), "num_kv_heads": int(layer.num_kv_heads),
            "head_dim": int(layer.head_size), "scale": float(scale),
            "window": getattr(layer, "sliding_window", None) or None,
            "softcap": getattr(impl, "logits_soft_cap", None) or None}


@contextlib.contextmanager
def eager_attention(attn_layers: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, each attention layer computes :func:`causal_attention` of its inputs
    (an instance attribute shadows the class's ``forward``; removed on exit)."""
    params = [_attention_params(a) for a in attn_layers]

    def make(p: dict[str, Any]) -> Any:
        def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
            return causal_attention(query, key, value, **p)
        return forward

    for a, p in zip(attn_layers, params, strict=True):
        a.forward = make(p)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for a in attn_layers:
            del a.forward


class LastTokenInputs:
    """Records each module's input (first argument) at the last position of the flattened tokens."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.rows: list[torch.Tensor | None] = [None] * len(self.modules)
        self._handles: list[Any] = []

    def __enter__(self) -> LastTokenInputs:
        for i, m in enumerate(self.modules):
            def pre(_m: nn.Module, args: tuple[Any, ...], i: int = i) -> None:
                self.rows[i] = args[0][-1].detach().float().clone()

            self._handles.append(m.register_forward_pre_hook(pre))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def take(self) -> torch.Tensor:
        """``[modules, width]`` of the last forward; raises if a module was not reached."""
        if any(r is None for r in self.rows):
            raise RuntimeError("the forward pass did not reach every out-projection")
        out = torch.stack([r for r in self.rows if r is not None])
        self.rows = [None] * len(self.modules)
        return out


def last_token_heads(forward: Any, attn_layers: Sequence[nn.Module], out_projs: Sequence[nn.Module],
                     sequences: Sequence[Sequence[int]], device: torch.device | str) -> torch.Tensor:
    """``[len(sequences), layers, width]`` float32: each out-projection's input at each sequence's
    last token, from ``forward(input_ids, positions)`` (the model's eager forward) with
    :func:`eager_attention` in place."""
    acts = []
    with torch.inference_mode(), eager_attention(attn_layers), LastTokenInputs(out_projs) as rec:
        for seq in sequences:
            ids = torch.tensor(list(seq), dtype=torch.long, device=device)
            forward(ids, torch.arange(ids.shape[0], device=device))
            acts.append(rec.take())
    return torch.stack(acts)


def pack(acts: torch.Tensor) -> dict[str, Any]:
    """A float32 tensor as plain shape + bytes: survives any RPC encoder between worker and engine."""
    a = acts.detach().to("cpu", torch.float32).contiguous()
    return {"shape": list(a.shape), "data": a.numpy().tobytes()}


def unpack(packed: dict[str, Any]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(packed["data"], dtype=np.float32).copy()).view(packed["shape"])
