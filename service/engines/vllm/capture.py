"""Head activations at the last token, read from the vLLM model (compiling Activation-RM profiles).

vLLM's forward pass is compiled, runs on the runner's batch and attention metadata, and returns
only the last hidden states, so it cannot hand back per-head activations of arbitrary sequences.
The capture therefore runs its own eager pass over the same modules (the worker calls it through
``collective_rpc``, between engine steps): the model's norms, fused QKV projection, rotary
embedding, ``o_proj`` and MLP, with attention computed by ``scaled_dot_product_attention`` over
one sequence at a time — no KV cache, no steering. What it returns is what
``transformers.hooks.HeadCapture`` records on the transformers engine: the ``o_proj`` input of every layer
at the sequence's last position.

Only this module's arithmetic is model-specific; it takes the layers as arguments, so it is
tested on CPU against the transformers engine with stand-ins that follow vLLM's module interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int,
                     head_dim: int, scale: float) -> torch.Tensor:
    """Causal self-attention of one sequence: ``q`` ``[T, H*D]``, ``k``/``v`` ``[T, KVH*D]`` (grouped
    query attention: each key/value head serves ``H // KVH`` query heads) -> ``[T, H*D]``."""
    t = q.shape[0]
    qh = q.view(t, num_heads, head_dim).transpose(0, 1)
    kh = k.view(t, num_kv_heads, head_dim).transpose(0, 1).repeat_interleave(num_heads // num_kv_heads, dim=0)
    vh = v.view(t, num_kv_heads, head_dim).transpose(0, 1).repeat_interleave(num_heads // num_kv_heads, dim=0)
    out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    return out.transpose(0, 1).reshape(t, num_heads * head_dim)


def last_token_heads(layers: Sequence[Any], embed: Callable[[torch.Tensor], torch.Tensor],
                     token_ids: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """``[layers, heads * head_dim]`` float32: every layer's ``o_proj`` input at the last token.

    ``layers`` follow vLLM's ``Qwen2DecoderLayer``: ``input_layernorm`` and
    ``post_attention_layernorm`` (``norm(x)`` or fused ``norm(x, residual) -> (x, residual)``),
    ``self_attn`` with ``qkv_proj``/``o_proj`` returning ``(out, bias)``, ``rotary_emb(positions,
    q, k)``, ``q_size``, ``kv_size``, ``num_heads``, ``num_kv_heads``, ``head_dim``, ``scaling``;
    and ``mlp``.
    """
    ids = torch.tensor(list(token_ids), dtype=torch.long, device=device)
    positions = torch.arange(ids.shape[0], device=device)
    hidden = embed(ids)
    residual: torch.Tensor | None = None
    out = []
    for i, layer in enumerate(layers):
        if residual is None:
            residual = hidden
            hidden = layer.input_layernorm(hidden)
        else:
            hidden, residual = layer.input_layernorm(hidden, residual)
        attn = layer.self_attn
        qkv, _ = attn.qkv_proj(hidden)
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        q, k = attn.rotary_emb(positions, q, k)
        heads = causal_attention(q, k, v, attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.scaling)
        out.append(heads[-1].float())
        if i == len(layers) - 1:
            break  # nothing later reads the last layer's MLP
        hidden, _ = attn.o_proj(heads)
        hidden, residual = layer.post_attention_layernorm(hidden, residual)
        hidden = layer.mlp(hidden)
    return torch.stack(out)


def pack(acts: torch.Tensor) -> dict[str, Any]:
    """A float32 tensor as plain shape + bytes: survives any RPC encoder between worker and engine."""
    a = acts.detach().to("cpu", torch.float32).contiguous()
    return {"shape": list(a.shape), "data": a.numpy().tobytes()}


def unpack(packed: dict[str, Any]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(packed["data"], dtype=np.float32).copy()).view(packed["shape"])
