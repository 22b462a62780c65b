"""The vLLM glue's pure logic (no vLLM needed): pair vetoes, steering slots and token indices,
head tables on the out-projection input, the head capture, and the nucleus fast path used by the
logits processor."""

from __future__ import annotations

import types

import numpy as np
import pytest
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


def test_head_tables_act_on_the_out_projection_input_like_the_transformers_hooks() -> None:
    """``x * keep + shift`` on the out-projection input equals what ``SteeringHooks`` does to
    ``o_proj``'s input: added head vectors add, replaced heads are replaced (and a replacement wins
    over an add on the same head), residual vectors go to their own table."""
    from service.engines.vllm.sharding import HeadShard

    g = torch.Generator().manual_seed(0)
    layers, hidden, heads, hd = 2, 8, 3, 4
    v_add = SteeringVector(layer=1, head=1, vector=torch.randn(hd, generator=g), scale=2.0, position="all")
    v_rep = SteeringVector(layer=0, head=0, vector=torch.ones(hd), replace=True, position="last_prompt")
    v_both = SteeringVector(layer=1, head=2, vector=torch.randn(hd, generator=g), position="all")
    v_both_rep = SteeringVector(layer=1, head=2, vector=torch.full((hd,), 5.0), replace=True, position="all")
    v_res = SteeringVector(layer=0, vector=torch.randn(hidden, generator=g), position="all")
    t = build_phase_tables([v_add, v_rep, v_both, v_both_rep, v_res], layers, hidden, HeadShard(0, 1, heads, hd))
    assert set(t) == {"body", "last", "gen"}
    x = torch.randn(heads * hd, generator=g)
    want = x.clone()
    want[hd:2 * hd] += 2.0 * v_add.vector
    want[2 * hd:] = 5.0
    torch.testing.assert_close(x * t["gen"].head_keep[1] + t["gen"].head_shift[1], want)
    last = x * t["last"].head_keep[0] + t["last"].head_shift[0]
    assert torch.equal(last[:hd], torch.ones(hd)) and torch.equal(last[hd:], x[hd:])
    assert torch.equal(t["gen"].head_keep[0], torch.ones(heads * hd))  # the replacement is last_prompt only
    assert torch.equal(t["body"].resid_add[0], v_res.vector) and not t["body"].resid_add[1].any()


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


def test_a_finished_spec_stays_parked_until_a_new_spec_needs_its_slots() -> None:
    a = SlotAllocator(6)  # slots 1..5
    s1 = a.allocate("r1", "k1", ["gen", "last"])
    a.release("r1")
    assert "k1" in a.parked and a.free == 5
    assert a.lookup("r2", "k1") == s1 and a.writes == 1  # the next request of the profile: no rewrite
    a.release("r2")
    s2 = a.allocate("r3", "k2", ["gen", "last"])
    a.release("r3")
    assert set(s2.values()).isdisjoint(s1.values())  # never-used slots go first
    assert a.lookup("r4", "k1") == s1  # k1 is now the most recently used; k2 the least
    s3 = a.allocate("r5", "k3", ["body", "last", "gen"])  # 1 free slot left: k2 is evicted, k1 stays
    assert "k2" not in a.parked and a.lookup("r6", "k2") is None
    assert set(s3.values()).isdisjoint(s1.values()) and a.users["k1"] == 1
    try:
        a.allocate("r7", "k4", ["gen", "last", "body"])  # only live specs left: nothing to evict
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


class _FakeVllmAttention(torch.nn.Module):
    """vLLM's ``Attention`` layer interface; its own forward needs a KV cache and batch metadata."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_size: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_size = num_heads, num_kv_heads, head_size
        self.sliding_window = None
        self.impl = types.SimpleNamespace(scale=head_size ** -0.5, logits_soft_cap=0, alibi_slopes=None)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("needs vLLM's forward context")


class _VllmStyleQwen2(torch.nn.Module):
    """The tiny HF Qwen2's weights in vLLM's shape: flat ``[tokens, hidden]`` activations, an
    ``attn(q, k, v)`` module between the projections, ``forward(input_ids, positions)``."""

    def __init__(self, hf: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf
        cfg = hf.config
        self.heads, self.kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = cfg.hidden_size // self.heads
        self.attn = torch.nn.ModuleList(_FakeVllmAttention(self.heads, self.kv, self.hd) for _ in hf.model.layers)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        m = self.hf.model
        h = m.embed_tokens(input_ids)
        t = h.shape[0]
        cos, sin = m.rotary_emb(h[None], positions[None])
        for layer, attn in zip(m.layers, self.attn, strict=True):
            a = layer.self_attn
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(1, t, self.heads, self.hd).transpose(1, 2)
            k = a.k_proj(x).view(1, t, self.kv, self.hd).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            heads = attn(q.transpose(1, 2).reshape(t, -1), k.transpose(1, 2).reshape(t, -1), a.v_proj(x))
            h = h + a.o_proj(heads)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h


def test_vllm_head_capture_matches_the_transformers_engine(tiny_engine: object) -> None:
    """The worker's capture — the model's own forward run eagerly, with only vLLM's attention
    kernel swapped for ``causal_attention`` (grouped KV heads) and pre-hooks on the
    out-projections — reads the same o_proj inputs as the transformers engine's hooks, with and
    without completions; afterwards the attention modules are vLLM's again; the RPC packing
    round-trips."""
    from service.engines.base import readout_sequences
    from service.engines.vllm.capture import last_token_heads, pack, unpack

    eng = tiny_engine
    model = _VllmStyleQwen2(eng.model)  # type: ignore[attr-defined]
    assert model.kv < model.heads  # exercises grouped-query attention
    projs = [layer.self_attn.o_proj for layer in eng.model.model.layers]  # type: ignore[attr-defined]
    convs = [[{"role": "user", "content": "Is Paris in France?"}],
             [{"role": "user", "content": "Explain what a CPU is, in one short sentence."}]]
    for completions in (None, [" Yes.", " A central processing unit runs instructions."]):
        seqs = readout_sequences(eng.encode_chat, eng.tokenizer, convs, completions)  # type: ignore[attr-defined]
        got = last_token_heads(model, list(model.attn), projs, seqs, "cpu")
        want = eng.capture_head_activations(convs, completions)  # type: ignore[attr-defined]
        torch.testing.assert_close(unpack(pack(got)).view(want.shape), want, atol=1e-4, rtol=1e-4)
        assert want.abs().max() > 0.1
    with pytest.raises(RuntimeError, match="forward context"):
        model(torch.tensor([1, 2]), torch.arange(2))


def test_causal_attention_window_and_softcap_match_a_dense_reference() -> None:
    from service.engines.vllm.capture import causal_attention

    g = torch.Generator().manual_seed(3)
    t, h, kvh, d = 7, 4, 2, 8
    q, k, v = (torch.randn(t, n * d, generator=g) for n in (h, kvh, kvh))
    got = causal_attention(q, k, v, h, kvh, d, scale=0.3, window=3, softcap=2.0)
    ref = torch.empty(t, h, d)
    for head in range(h):
        kv = head // (h // kvh)
        qh, kh, vh = q.view(t, h, d)[:, head], k.view(t, kvh, d)[:, kv], v.view(t, kvh, d)[:, kv]
        for i in range(t):
            js = [j for j in range(t) if 0 <= i - j < 3]
            s = torch.stack([2.0 * torch.tanh((qh[i] @ kh[j]) * 0.3 / 2.0) for j in js])
            ref[i, head] = s.softmax(0) @ vh[js]
    torch.testing.assert_close(got, ref.reshape(t, h * d), atol=1e-5, rtol=1e-5)
    plain = causal_attention(q, k, v, h, kvh, d, scale=0.3)
    assert not torch.allclose(plain, got)


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


def test_token_slots_equal_a_per_token_reference_on_random_batches() -> None:
    """The vectorised index against the definition, token by token: chunked prefills that end
    before, at or after the last prompt token, decodes, unsteered rows and rows with nothing
    scheduled."""
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 7))
        prompt = rng.integers(1, 12, n)
        computed = np.array([int(rng.integers(0, p + 6)) for p in prompt], dtype=np.int64)
        scheduled = rng.integers(0, 5, n)
        slots = [None if rng.random() < 0.3 else {k: int(rng.integers(1, 9)) for k in ("body", "last", "gen")
                                                  if rng.random() < 0.8} for _ in range(n)]
        want = []
        for i in range(n):
            for pos in range(computed[i], computed[i] + scheduled[i]):
                s = slots[i] or {}
                phase = "body" if pos < prompt[i] - 1 else "last" if pos == prompt[i] - 1 else "gen"
                want.append(s.get(phase, 0))
        assert token_slots(computed, scheduled, prompt, slots).tolist() == want


def test_steering_key_tells_every_field_and_every_value_apart() -> None:
    base = SteeringVector(layer=1, head=2, vector=torch.tensor([0.5, -1.0, 2.0]), scale=1.5, position="all")
    key = steering_key(vectors_to_args([base]))
    assert key == steering_key(vectors_to_args([SteeringVector(layer=1, head=2, vector=torch.tensor([0.5, -1.0, 2.0]),
                                                               scale=1.5, position="all")]))
    variants = [dict(layer=0), dict(head=3), dict(head=None), dict(scale=1.0), dict(position="generated"),
                dict(replace=True), dict(vector=torch.tensor([0.5, -1.0, 2.0001])),
                dict(vector=torch.tensor([0.5, -1.0]))]
    keys = {key}
    for change in variants:
        fields = dict(layer=1, head=2, vector=torch.tensor([0.5, -1.0, 2.0]), scale=1.5, position="all")
        fields.update(change)  # type: ignore[arg-type]
        keys.add(steering_key(vectors_to_args([SteeringVector(**fields)])))  # type: ignore[arg-type]
    assert len(keys) == len(variants) + 1
    # two vectors are not one longer vector
    a = SteeringVector(layer=1, vector=torch.tensor([1.0, 2.0]))
    b = SteeringVector(layer=1, vector=torch.tensor([3.0]))
    ab = SteeringVector(layer=1, vector=torch.tensor([1.0, 2.0, 3.0]))
    assert steering_key(vectors_to_args([a, b])) != steering_key(vectors_to_args([ab]))
