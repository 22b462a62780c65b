"""Qwen2 for vLLM with steering in the forward pass (works under torch.compile and CUDA graphs).

Registered as ``AlignserveQwen2ForCausalLM`` (see ``plugin.py``); the engine selects it with
``hf_overrides={"architectures": [...]}``. Parameter names are those of vLLM's ``Qwen2ForCausalLM``,
so checkpoints load unchanged. The steering buffers (``steer_tables`` explains them) are
non-persistent module buffers: CUDA graphs are captured on their addresses and the runner hook
(``worker.py``) updates their contents in place before each step.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.qwen2 import Qwen2DecoderLayer, Qwen2ForCausalLM, Qwen2Model
from vllm.model_executor.models.utils import PPMissingLayer, extract_layer_index, maybe_prefix

ARCH = "AlignserveQwen2ForCausalLM"
DEFAULT_SLOTS = 3 * 64 + 1


class SteerableQwen2DecoderLayer(Qwen2DecoderLayer):
    def __init__(self, *, index: torch.Tensor, slots: int, config: Any, cache_config: Any = None,
                 quant_config: Any = None, prefix: str = "") -> None:
        super().__init__(config=config, cache_config=cache_config, quant_config=quant_config, prefix=prefix)
        if getattr(self.self_attn, "qk_norm", False):
            raise ValueError("steerable Qwen2 does not support qk_norm variants")
        self.layer_idx = extract_layer_index(prefix)
        hidden = config.hidden_size
        width = self.self_attn.num_heads * self.self_attn.head_dim
        dtype = torch.get_default_dtype()
        self.register_buffer("steer_index", index, persistent=False)
        self.register_buffer("resid_add", torch.zeros(slots, hidden, dtype=dtype), persistent=False)
        self.register_buffer("attn_add", torch.zeros(slots, hidden, dtype=dtype), persistent=False)
        self.register_buffer("head_keep", torch.ones(slots, width, dtype=dtype), persistent=False)
        self.register_buffer("head_repl", torch.zeros(slots, width, dtype=dtype), persistent=False)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        slot = self.steer_index[: hidden_states.shape[0]]
        attn = self.self_attn
        qkv, _ = attn.qkv_proj(hidden_states)
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        q, k = attn.rotary_emb(positions, q, k)
        heads = attn.attn(q, k, v)
        heads = heads * self.head_keep[slot] + self.head_repl[slot]  # per-head replace (o_proj input)
        hidden_states, _ = attn.o_proj(heads)
        hidden_states = hidden_states + self.attn_add[slot]  # additive head vectors, folded via W_o
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        hidden_states = self.mlp(hidden_states)
        # the residual stream after this layer is hidden_states + residual (vLLM fuses the add
        # into the next norm), so adding to either adds to the stream
        return hidden_states + self.resid_add[slot], residual


class SteerableQwen2ForCausalLM(Qwen2ForCausalLM):
    """``Qwen2ForCausalLM`` whose decoder layers read the steering tables."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_config.get_text_config()
        extra = vllm_config.additional_config if isinstance(vllm_config.additional_config, dict) else {}
        slots = int(extra.get("alignserve_steer_slots", DEFAULT_SLOTS))
        max_tokens = int(vllm_config.scheduler_config.max_num_batched_tokens) + 1024  # cudagraph padding
        index = torch.zeros(max_tokens, dtype=torch.long)
        self.config = config
        self.quant_config = vllm_config.quant_config
        layer_type = functools.partial(SteerableQwen2DecoderLayer, index=index, slots=slots)
        self.model = Qwen2Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"),
                                decoder_layer_type=layer_type)  # type: ignore[arg-type]
        if get_pp_group().is_last_rank:
            if config.tie_word_embeddings:
                self.lm_head = self.model.embed_tokens
            else:
                self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                              quant_config=self.quant_config,
                                              prefix=maybe_prefix(prefix, "lm_head"))
        else:
            self.lm_head = PPMissingLayer()
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        self.steer_slots = slots
