"""The transformers engine on a tiny random qwen2 model: LA bookkeeping, batching, stops, steering."""

from __future__ import annotations

import threading

import pytest
import torch

from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec, SteeringVector
from service.engines.base import GenerationRequest, TokenEvent
from service.engines.chat import with_principle, with_system
from service.engines.transformers.engine import TransformersEngine
from service.reward.judge import YES_NO

PRINCIPLE = "Always answer in Japanese."
Q = [{"role": "user", "content": "What is the capital of France?"}]


def req(rid: str, la: LinearAlignmentConfig | None = None, max_tokens: int = 12, messages=None,
        **sampling) -> GenerationRequest:
    return GenerationRequest(rid, messages or Q, SamplingParams(max_tokens=max_tokens, **sampling),
                             AlignmentSpec(la=la))


def test_plain_greedy_equals_transformers_generate(tiny_engine: TransformersEngine) -> None:
    [res] = tiny_engine.generate([req("a", max_tokens=10)])
    ids = torch.tensor([tiny_engine.encode_chat(with_system(Q, tiny_engine.default_system))])
    ref = tiny_engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                     eos_token_id=sorted(tiny_engine.eos_ids), pad_token_id=tiny_engine.pad_id)
    expect = ref[0, ids.shape[1]:].tolist()
    assert res.token_ids == expect[: len(res.token_ids)]
    assert len(res.token_ids) == len(expect) or res.finish_reason == "stop"


def test_strength_zero_reproduces_principle_prompted_greedy_decoding(tiny_engine: TransformersEngine) -> None:
    """r=0 with the plausibility mask off adds nothing to greedy decoding of the principle context."""
    la = LinearAlignmentConfig(PRINCIPLE, strength=0.0, plausibility_top_p=1.0)
    [aligned] = tiny_engine.generate([req("la", la, max_tokens=16)])
    principled = with_principle(Q, PRINCIPLE, tiny_engine.default_system)
    [plain] = tiny_engine.generate([req("p", None, max_tokens=16, messages=principled)])
    assert aligned.token_ids == plain.token_ids
    assert aligned.strengths == [0.0] * len(aligned.token_ids)


def test_strength_changes_output(tiny_engine: TransformersEngine) -> None:
    base = tiny_engine.generate([req("b", LinearAlignmentConfig(PRINCIPLE, strength=0.0), max_tokens=16)])[0]
    strong = tiny_engine.generate([req("s", LinearAlignmentConfig(PRINCIPLE, strength=8.0), max_tokens=16)])[0]
    assert base.token_ids != strong.token_ids


def test_both_streams_receive_identical_tokens(tiny_engine: TransformersEngine) -> None:
    seen: list[torch.Tensor] = []
    handle = tiny_engine.model.model.embed_tokens.register_forward_hook(
        lambda _m, args, _o: seen.append(args[0].detach().clone()))
    try:
        [res] = tiny_engine.generate([req("la", LinearAlignmentConfig(PRINCIPLE, strength=3.0), max_tokens=8)])
    finally:
        handle.remove()
    decode_inputs = seen[1:]  # after the prefill every forward feeds one token per stream
    assert res.completion_tokens >= 4
    assert len(decode_inputs) == len(res.token_ids) - 1  # the last token is never fed back
    for step, ids in enumerate(decode_inputs):
        assert ids.shape == (2, 1)
        assert ids[0, 0] == ids[1, 0] == res.token_ids[step]


def test_mixed_batch_equals_individual_runs(tiny_engine: TransformersEngine) -> None:
    reqs = [
        req("plain", None, max_tokens=10),
        req("la3", LinearAlignmentConfig(PRINCIPLE, strength=3.0), max_tokens=6),
        req("adaptive", LinearAlignmentConfig("Be concise.", adaptive=True, kl_budget=0.5), max_tokens=10,
            messages=[{"role": "user", "content": "Explain what a CPU is."}]),
    ]
    together = tiny_engine.generate(reqs)
    alone = [tiny_engine.generate([r])[0] for r in reqs]
    for a, b in zip(together, alone, strict=True):
        assert a.request_id == b.request_id
        assert a.token_ids == b.token_ids
    assert together[2].mean_strength is not None and 0 < together[2].mean_strength <= 10.0


def test_max_tokens_stop_strings_and_streaming(tiny_engine: TransformersEngine) -> None:
    """``ignore_eos`` makes the answer run to ``max_tokens``, so it is long enough for a stop string
    taken from its middle — one that straddles two tokens, so its first character arrives a step
    before the match and must be held back. The stopped answer is the prefix before the stop
    string, and what streams out is exactly that."""
    events: list[TokenEvent] = []
    r = req("s", None, max_tokens=20, ignore_eos=True)
    r.on_token = events.append
    [full] = tiny_engine.generate([r])
    assert full.finish_reason == "length" and full.completion_tokens == 20
    assert "".join(e.text for e in events) == full.text
    assert [e.index for e in events] == list(range(full.completion_tokens))
    straddling = []  # (where, stop): last char of one token's text + first char of the next's
    end = 0
    for a, b in zip(events, events[1:], strict=False):
        end += len(a.text)
        if a.text and b.text and end >= 2 and full.text.find(a.text[-1] + b.text[0]) == end - 1:
            straddling.append((end - 1, a.text[-1] + b.text[0]))
    assert straddling, [e.text for e in events]  # the set-up: such a stop string exists
    where, stop = straddling[0]
    cut_events: list[TokenEvent] = []
    c = req("c", None, max_tokens=20, ignore_eos=True, stop=(stop,))
    c.on_token = cut_events.append
    [cut] = tiny_engine.generate([c])
    assert cut.finish_reason == "stop" and cut.text == full.text[:where]
    assert cut.completion_tokens < full.completion_tokens
    assert "".join(e.text for e in cut_events) == cut.text  # the stop string never streams out


def test_cancellation_stops_decoding(tiny_engine: TransformersEngine) -> None:
    """``ignore_eos`` rules out a natural stop before the cancel, so the request must end cancelled
    right after the token whose callback cancelled it; the request batched with it is unaffected."""
    r = req("x", None, max_tokens=50, ignore_eos=True)
    cancel_after = 3

    def on_token(ev: TokenEvent) -> None:
        if ev.index + 1 == cancel_after:
            r.cancelled.set()

    r.on_token = on_token
    other = req("y", None, max_tokens=12)
    res, res_other = tiny_engine.generate([r, other])
    assert res.finish_reason == "cancelled" and res.completion_tokens == cancel_after
    [alone] = tiny_engine.generate([req("y", None, max_tokens=12)])
    assert res_other.finish_reason in ("stop", "length") and res_other.token_ids == alone.token_ids


def test_seeded_sampling_reproducible(tiny_engine: TransformersEngine) -> None:
    a = tiny_engine.generate([req("a", LinearAlignmentConfig(PRINCIPLE), temperature=1.0, seed=3)])[0]
    b = tiny_engine.generate([req("b", LinearAlignmentConfig(PRINCIPLE), temperature=1.0, seed=3)])[0]
    assert a.token_ids == b.token_ids


def test_steering_changes_output_and_zero_vector_does_not(tiny_engine: TransformersEngine) -> None:
    hidden = tiny_engine.model.config.hidden_size
    base = tiny_engine.generate([req("b", max_tokens=10)])[0]
    zero = GenerationRequest("z", Q, SamplingParams(max_tokens=10), AlignmentSpec(
        steering=(SteeringVector(layer=1, vector=torch.zeros(hidden)),)))
    push = GenerationRequest("p", Q, SamplingParams(max_tokens=10), AlignmentSpec(
        steering=(SteeringVector(layer=1, vector=torch.randn(hidden, generator=torch.Generator().manual_seed(0)),
                                 scale=20.0),)))
    head = GenerationRequest("h", Q, SamplingParams(max_tokens=10), AlignmentSpec(
        steering=(SteeringVector(layer=0, head=1, vector=torch.full((tiny_engine.head_dim,), 5.0), replace=True),)))
    out_zero, out_push, out_head, out_base = tiny_engine.generate([zero, push, head, req("b2", max_tokens=10)])
    assert out_zero.token_ids == base.token_ids == out_base.token_ids  # steering stays on its own rows
    assert out_push.token_ids != base.token_ids
    assert out_head.token_ids != base.token_ids


def test_yes_probability_and_head_capture(tiny_engine: TransformersEngine) -> None:
    convs = [[{"role": "user", "content": "Is Paris in France?"}], [{"role": "user", "content": "hello"}]]
    p = tiny_engine.label_probability(convs, YES_NO)
    assert len(p) == 2 and all(0.0 < x < 1.0 for x in p)
    acts = tiny_engine.capture_head_activations(convs)
    assert acts.shape == (2, tiny_engine.num_layers, tiny_engine.num_heads, tiny_engine.head_dim)
    # replacing a head's output with its own captured activation leaves the readout unchanged
    same = [SteeringVector(layer=1, head=h, vector=acts[0, 1, h], position="last_prompt", replace=True)
            for h in range(tiny_engine.num_heads)]
    assert tiny_engine.label_probability(convs[:1], YES_NO, same)[0] == __import__("pytest").approx(p[0], abs=1e-5)


def test_engine_is_safe_to_call_from_a_thread(tiny_engine: TransformersEngine) -> None:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(tiny_engine.generate([req("t", max_tokens=4)])[0].text))
    t.start()
    t.join(30)
    assert out


def test_principle_placement_user() -> None:
    convo = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
             {"role": "user", "content": "second"}]
    out = with_principle(convo, "Be brief.", "SYS", placement="user")
    assert out[0] == {"role": "system", "content": "SYS"}
    assert out[-1]["content"] == "Be brief.\n\nsecond" and out[1]["content"] == "first"
    sys_out = with_principle(convo, "Be brief.", "SYS")
    assert sys_out[0]["content"] == "SYS\n\nBe brief." and sys_out[-1]["content"] == "second"
    assert convo[-1]["content"] == "second"  # the request's messages are not mutated


def test_user_placement_changes_the_principle_stream(tiny_engine: TransformersEngine) -> None:
    sys_la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    user_la = LinearAlignmentConfig(PRINCIPLE, strength=3.0, placement="user")
    a, b = tiny_engine.generate([req("s", sys_la), req("u", user_la)])
    sys_ids = tiny_engine.encode_chat(with_principle(Q, PRINCIPLE, tiny_engine.default_system))
    user_ids = tiny_engine.encode_chat(with_principle(Q, PRINCIPLE, tiny_engine.default_system, "user"))
    assert sys_ids != user_ids
    assert (a.principle_prompt_tokens, b.principle_prompt_tokens) == (len(sys_ids), len(user_ids))
    assert tiny_engine.prompt_size(Q, PRINCIPLE, "user").principle == len(user_ids)


def test_readout_session_matches_full_forward_and_capture_of_completions(tiny_engine: TransformersEngine) -> None:
    convs = [[{"role": "user", "content": "Is Paris in France?"}], [{"role": "user", "content": "a much longer hello"}]]
    base = tiny_engine.label_probability(convs, YES_NO)
    push = [SteeringVector(layer=0, head=0, vector=torch.full((tiny_engine.head_dim,), 3.0), position="last_prompt",
                           replace=True)]
    pushed = tiny_engine.label_probability(convs, YES_NO, push)
    readout = tiny_engine.open_readout(convs)
    got = readout.label_probability([[], push, []], YES_NO)
    readout.close()
    assert got.shape == (3, 2)
    assert got[0].tolist() == pytest.approx(base, abs=1e-5)
    assert got[1].tolist() == pytest.approx(pushed, abs=1e-5)
    assert got[2].tolist() == pytest.approx(base, abs=1e-5)  # the cache was cropped back to the prefix
    assert pushed != pytest.approx(base, abs=1e-4)
    # capture at the end of a completion equals capture of the prompt that already contains it
    ids = tiny_engine.encode_chat(convs[0]) + tiny_engine.tokenizer.encode(" yes it is", add_special_tokens=False)
    with_completion = tiny_engine.capture_head_activations(convs[:1], [" yes it is"])
    prompt_only = tiny_engine.capture_head_activations(convs[:1])
    assert not torch.allclose(with_completion, prompt_only)
    assert with_completion.shape == prompt_only.shape
    assert len(ids) > len(tiny_engine.encode_chat(convs[0]))


def test_steered_rows_survive_batch_compaction(tiny_engine: TransformersEngine) -> None:
    """When a batch-mate finishes early its rows leave the KV cache; the steering plans must follow
    (regression: hooks kept the pre-compaction plans and crashed on the row count)."""
    d = tiny_engine.head_dim

    def steered(rid: str, n: int, head: int, value: float) -> GenerationRequest:
        return GenerationRequest(rid, Q, SamplingParams(max_tokens=n), AlignmentSpec(steering=(
            SteeringVector(layer=0, head=head, vector=torch.full((d,), value)),
            SteeringVector(layer=1, vector=torch.full((tiny_engine.model.config.hidden_size,), value / 4)))))

    alone = tiny_engine.generate([steered("long", 10, 1, 3.0)])[0]
    short, long_, plain = tiny_engine.generate([steered("short", 2, 2, -3.0), steered("long", 10, 1, 3.0),
                                                req("plain", max_tokens=10)])
    assert short.completion_tokens <= 2
    assert long_.token_ids == alone.token_ids
    assert plain.token_ids == tiny_engine.generate([req("plain", max_tokens=10)])[0].token_ids
