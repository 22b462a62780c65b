"""The vLLM glue's pure logic (no vLLM needed): pair vetoes, steering slots and token indices,
head-vector folding through o_proj, and the nucleus fast path used by the logits processor."""

from __future__ import annotations

import numpy as np
import torch

from service.alignment.linear_alignment import nucleus_mask
from service.alignment.spec import SteeringVector
from service.engines.vllm.pairing import PairBook, pair_tag, vetoes
from service.engines.vllm.steer_tables import (
    SlotAllocator,
    build_phase_tables,
    steering_key,
    token_slots,
    vectors_from_args,
    vectors_to_args,
)


def book() -> PairBook:
    b = PairBook()
    b.add("a-p", "A", "principle")
    b.add("a-b", "A", "plain")
    return b


def test_pair_keeps_token_only_when_both_sampled_the_same() -> None:
    b = book()
    assert vetoes(b, {"a-p": [5], "a-b": [5], "solo": [9]}) == set()
    assert vetoes(b, {"a-p": [5], "a-b": []}) == {"a-p"}  # partner mid-prefill
    assert vetoes(b, {"a-p": [5]}) == {"a-p"}  # partner not scheduled (e.g. preempted)
    assert vetoes(b, {"a-p": [5], "a-b": [6]}) == {"a-p", "a-b"}
    b.drop("a-b")
    assert vetoes(b, {"a-p": [5]}) == {"a-p"}  # an orphan never commits
    assert pair_tag({"alignserve": {"pair": "A", "role": "plain"}}) == ("A", "plain")
    assert pair_tag({"other": 1}) is None and pair_tag(None) is None


def test_token_slots_follow_prompt_phases() -> None:
    slots = [{"body": 1, "last": 2, "gen": 3}, None, {"gen": 4, "last": 5}]
    # req0: prompt of 4 tokens, prefill chunk positions 0..3; req1 unsteered; req2 decoding at 10
    idx = token_slots([0, 0, 10], [4, 3, 1], [4, 3, 6], slots)
    assert idx.tolist() == [1, 1, 1, 2, 0, 0, 0, 4]
    # a chunk that ends before the last prompt token steers only the body
    assert token_slots([0], [2], [6], [{"last": 2}]).tolist() == [0, 0]


def test_head_vectors_fold_through_o_proj_and_replace_masks() -> None:
    g = torch.Generator().manual_seed(0)
    layers, hidden, heads, hd = 2, 8, 2, 4
    w = [torch.randn(hidden, heads * hd, generator=g) for _ in range(layers)]
    v_add = SteeringVector(layer=1, head=1, vector=torch.randn(hd, generator=g), scale=2.0)
    v_rep = SteeringVector(layer=0, head=0, vector=torch.ones(hd), replace=True, position="last_prompt")
    v_res = SteeringVector(layer=0, vector=torch.randn(hidden, generator=g), position="all")
    t = build_phase_tables([v_add, v_rep, v_res], layers, hidden, heads, hd, lambda i: w[i])
    assert set(t) == {"body", "last", "gen"}
    x = torch.randn(heads * hd, generator=g)
    manual = x.clone()
    manual[hd:] += 2.0 * v_add.vector
    assert torch.allclose(w[1] @ x + t["gen"].attn_add[1], w[1] @ manual, atol=1e-5)
    assert torch.equal(t["last"].head_keep[0, :hd], torch.zeros(hd))
    assert torch.equal(t["gen"].head_keep[0], torch.ones(heads * hd))  # replace only at last_prompt
    assert torch.equal(t["body"].resid_add[0], v_res.vector) and torch.equal(t["body"].attn_add, torch.zeros(2, 8))


def test_slots_are_shared_per_spec_and_recycled() -> None:
    a = SlotAllocator(4)
    s1 = a.allocate("r1", "k", ["gen", "last"])
    assert a.lookup("r2", "k") == s1 and a.lookup("r3", "other") is None
    assert a.release("r1") == [] and sorted(a.release("r2")) == sorted(s1.values())
    assert a.free == 3
    try:
        a.allocate("r4", "x", ["body", "last", "gen", "gen2"])
        raise AssertionError("expected exhaustion")
    except RuntimeError:
        pass


def test_steering_args_round_trip_and_key() -> None:
    vs = [SteeringVector(layer=3, vector=torch.tensor([0.5, -1.0]), head=1, scale=2.0, position="all")]
    args = vectors_to_args(vs)
    back = vectors_from_args(args)
    assert back[0].layer == 3 and back[0].head == 1 and torch.equal(back[0].vector, vs[0].vector)
    assert steering_key(args) == steering_key(vectors_to_args(back))
    assert steering_key(args) != steering_key(vectors_to_args([SteeringVector(layer=2, vector=torch.ones(2))]))


def test_nucleus_fast_path_equals_full_sort() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 500, generator=g) * torch.tensor([0.1, 1, 3, 8, 0.01, 20]).unsqueeze(-1)
    top_p, temp = torch.full((6,), 0.8), torch.full((6,), 0.5)
    fast = nucleus_mask(logits, top_p, temp, fast_k=16)
    full = nucleus_mask(logits, top_p, temp, fast_k=500)
    assert torch.equal(fast, full)
    assert np.array(fast.sum(-1)).min() >= 1


class _VllmStyleNorm:
    """vLLM's RMSNorm interface over a transformers norm: ``norm(x)`` or fused ``norm(x, residual)``."""

    def __init__(self, norm: torch.nn.Module) -> None:
        self.norm = norm

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> object:
        if residual is None:
            return self.norm(x)
        residual = x + residual
        return self.norm(residual), residual


class _VllmStyleAttention:
    """vLLM's Qwen2Attention interface (fused QKV, ``(out, bias)`` projections, ``rotary_emb``)."""

    def __init__(self, attn: torch.nn.Module, rotary: torch.nn.Module, cfg: object) -> None:
        self.attn, self.rotary = attn, rotary
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads  # type: ignore[attr-defined]
        self.head_dim = cfg.hidden_size // self.num_heads  # type: ignore[attr-defined]
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.scaling = self.head_dim ** -0.5

    def qkv_proj(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        a = self.attn
        return torch.cat([a.q_proj(x), a.k_proj(x), a.v_proj(x)], dim=-1), None  # type: ignore[operator]

    def o_proj(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.attn.o_proj(x), None  # type: ignore[operator]

    def rotary_emb(self, positions: torch.Tensor, q: torch.Tensor,
                   k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        t = q.shape[0]
        cos, sin = self.rotary(q.unsqueeze(0), positions.unsqueeze(0))
        qh = q.view(1, t, self.num_heads, self.head_dim).transpose(1, 2)
        kh = k.view(1, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        qr, kr = apply_rotary_pos_emb(qh, kh, cos, sin)
        return qr.transpose(1, 2).reshape(t, -1), kr.transpose(1, 2).reshape(t, -1)


def test_vllm_head_capture_matches_the_transformers_engine(tiny_engine: object) -> None:
    """The capture the vLLM worker runs (its own eager pass over the model's modules, SDPA with
    grouped KV heads) reads the same o_proj inputs as the transformers engine's hooks, with and
    without completions; the RPC packing round-trips."""
    from types import SimpleNamespace

    from service.engines.base import readout_sequences
    from service.engines.vllm.capture import last_token_heads, pack, unpack

    eng = tiny_engine
    hf = eng.model.model  # type: ignore[attr-defined]
    cfg = eng.model.config  # type: ignore[attr-defined]
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # exercises grouped-query attention
    layers = [SimpleNamespace(input_layernorm=_VllmStyleNorm(layer.input_layernorm),
                              post_attention_layernorm=_VllmStyleNorm(layer.post_attention_layernorm),
                              self_attn=_VllmStyleAttention(layer.self_attn, hf.rotary_emb, cfg), mlp=layer.mlp)
              for layer in hf.layers]
    convs = [[{"role": "user", "content": "Is Paris in France?"}],
             [{"role": "user", "content": "Explain what a CPU is, in one short sentence."}]]
    for completions in (None, [" Yes.", " A central processing unit runs instructions."]):
        seqs = readout_sequences(eng.encode_chat, eng.tokenizer, convs, completions)  # type: ignore[attr-defined]
        with torch.inference_mode():
            got = torch.stack([last_token_heads(layers, hf.embed_tokens, s, "cpu") for s in seqs])
        want = eng.capture_head_activations(convs, completions)  # type: ignore[attr-defined]
        torch.testing.assert_close(unpack(pack(got)).view(want.shape), want, atol=1e-4, rtol=1e-4)
        assert want.abs().max() > 0.1


def test_cache_salt_keeps_steered_kv_apart() -> None:
    from service.engines.vllm.steer_tables import cache_salt

    v = torch.ones(4)
    gen = vectors_to_args([SteeringVector(layer=0, vector=v)])
    readout = vectors_to_args([SteeringVector(layer=0, head=1, vector=v, position="last_prompt", replace=True)])
    assert cache_salt([]) is None and cache_salt(readout) is None  # only the recomputed last token changes
    assert cache_salt(gen) is not None and cache_salt(gen) == cache_salt(vectors_to_args([SteeringVector(0, v)]))
    assert cache_salt(readout + gen) not in (None, cache_salt(gen))
    everywhere = vectors_to_args([SteeringVector(layer=0, vector=v, position="all")])
    assert cache_salt(everywhere) not in (None, cache_salt(gen))
