"""Activation-RM judge formats: generic label scoring in the engines, the ranked template with
order-averaged pairwise scores, ranked compilation and serving, and old profiles reading as scalar."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.alignment.spec import SteeringVector
from service.engines.base import Message
from service.engines.labels import first_of_two, label_token_ids
from service.engines.transformers.engine import TransformersEngine
from service.reward.activation_rm import (
    ActivationRMScorer,
    CompiledARM,
    CompileSettings,
    LabelledExample,
    RankedPair,
    compile_activation_rm,
    ranked_fewshot_context,
    ranked_pairs,
)
from service.reward.judge import YES_NO, judge_conversation
from service.reward.ranked import (
    AB,
    MAX_RANKED_RESPONSES,
    RANKED_SYSTEM,
    mean_win_probabilities,
    ordered_pairs,
    ranked_conversation,
    ranked_scores,
    win_probability,
)

from .conftest import make_settings, open_client

QUALITY = {"good": 1.5, "ok": 0.5, "bad": -1.0}
BIAS = 0.8  # the stub judge's lean toward answering "A", whatever is shown


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _shown(conv: list[Message]) -> tuple[str, str]:
    text = conv[-1]["content"]
    a = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
    b = text.split("[Response B]\n")[1].split("\n\n[Criterion]")[0]
    return a, b


class StubJudge:
    """P(A) = σ(quality(A) − quality(B) + BIAS) for ranked queries; 0.3 for any Yes/No query."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[Message]], tuple[str, str], list[SteeringVector]]] = []

    def label_probability(self, conversations: Sequence[list[Message]], labels: tuple[str, str],
                          steering: Sequence[SteeringVector] = ()) -> list[float]:
        self.calls.append((list(conversations), labels, list(steering)))
        if labels == YES_NO:
            return [0.3] * len(conversations)
        assert labels == AB
        return [_sigmoid(QUALITY[a] - QUALITY[b] + BIAS) for a, b in map(_shown, conversations)]


def test_ranked_template_shows_both_responses_in_their_slots() -> None:
    conv = ranked_conversation("What is rain?", "first answer", "second answer", "Is it in French?")
    assert conv[0] == {"role": "system", "content": RANKED_SYSTEM} and "A or B" in RANKED_SYSTEM
    assert conv[1]["role"] == "user"
    assert conv[1]["content"] == ("[Question]\nWhat is rain?\n\n[Response A]\nfirst answer\n\n[Response B]\n"
                                  "second answer\n\n[Criterion]\nIs it in French?\n\nWhich response meets the "
                                  "criterion better? Answer A or B.")
    assert ordered_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


def test_order_averaging_by_hand_on_a_stub_judge() -> None:
    judge = StubJudge()
    # good vs bad: d = 2.5; P(A | good first) = σ(3.3) = 0.964429, P(A | bad first) = σ(-1.7),
    # so P(good ≻ bad) = ½ [σ(3.3) + 1 − σ(−1.7)] = ½ [0.964429 + 0.845535] = 0.904982
    two = ranked_scores(judge, "q", ["good", "bad"], "r")  # type: ignore[arg-type]
    assert two == pytest.approx([0.904982, 1 - 0.904982], abs=1e-6)
    convs, labels, _ = judge.calls[-1]
    assert labels == AB and [_shown(c) for c in convs] == [("good", "bad"), ("bad", "good")]
    # three: each response's mean win probability over the other two, e.g. good:
    # ½ [P(good ≻ ok) + P(good ≻ bad)] = ½ [½ (σ(1.8) + σ(0.2)) + 0.904982] = 0.804487
    three = ranked_scores(judge, "q", ["good", "ok", "bad"], "r")  # type: ignore[arg-type]
    assert three == pytest.approx([0.804487, 0.542270, 0.153243], abs=1e-6)
    assert sum(three) == pytest.approx(1.5)  # every comparison splits one unit: n / 2 in all
    # equal responses: the lean toward A cancels exactly; one order alone would read σ(0.8) = 0.69
    assert ranked_scores(judge, "q", ["ok", "ok"], "r") == pytest.approx([0.5, 0.5], abs=1e-12)  # type: ignore[arg-type]
    assert win_probability(_sigmoid(BIAS), _sigmoid(BIAS)) == pytest.approx(0.5)
    assert ranked_scores(judge, "q", ["good"], "r") == [0.5]  # type: ignore[arg-type]
    assert mean_win_probabilities([0.9, 0.2], 2) == pytest.approx([0.85, 0.15])
    with pytest.raises(ValueError):
        mean_win_probabilities([0.5], 2)


def test_ranked_scoring_batches_passes_steering_and_bounds_candidates() -> None:
    judge = StubJudge()
    patch = [SteeringVector(layer=0, head=1, vector=torch.ones(4), position="last_prompt", replace=True)]
    scores = ranked_scores(judge, "q", ["good", "ok"] * 8, "r", patch)  # type: ignore[arg-type]
    assert len(scores) == MAX_RANKED_RESPONSES
    assert sum(len(c) for c, _, _ in judge.calls) == 16 * 15 and len(judge.calls) == 8  # batches of 32
    assert all(s == patch for _, _, s in judge.calls)
    with pytest.raises(ValueError, match="at most 16"):
        ranked_scores(judge, "q", ["ok"] * 17, "r")  # type: ignore[arg-type]


def test_scorer_follows_the_compiled_format() -> None:
    judge = StubJudge()
    empty = torch.zeros(0, 4)
    ranked = CompiledARM([], empty, empty, torch.zeros(0), {"format": "ranked"})
    old = CompiledARM([], empty, empty, torch.zeros(0), {"model": "m"})  # compiled before formats existed
    assert old.format == "scalar" and ranked.format == "ranked"
    assert ActivationRMScorer().score(judge, "q", ["good", "bad"], "r", ranked) == \
        pytest.approx([0.904982, 0.095018], abs=1e-6)  # type: ignore[arg-type]
    assert ActivationRMScorer().score(judge, "q", ["good", "bad"], "r", old) == [0.3, 0.3]  # type: ignore[arg-type]
    convs, labels, _ = judge.calls[-1]
    assert labels == YES_NO and convs == [judge_conversation("q", "good", "r"), judge_conversation("q", "bad", "r")]


def test_ranked_pairs_and_fewshot_contexts_by_hand() -> None:
    ex = [LabelledExample("p1", "g1", True), LabelledExample("p1", "b1", False), LabelledExample("p2", "g", True),
          LabelledExample("p1", "g2", True), LabelledExample("p3", "b", False), LabelledExample("p3", "g", True)]
    assert ranked_pairs(ex) == [RankedPair("p1", "g1", "b1"), RankedPair("p1", "g2", "b1"), RankedPair("p3", "g", "b")]
    demos = [RankedPair(f"d{k}", f"win{k}", f"lose{k}") for k in range(3)]
    ctx = ranked_fewshot_context(demos, RankedPair("q", "W", "L"), "r", query_chosen_first=True)
    assert ctx[0]["content"] == RANKED_SYSTEM and [m["role"] for m in ctx[1:]] == ["user", "assistant"] * 3 + ["user"]
    answers = [m["content"] for m in ctx[2::2]]
    assert answers == ["B", "A", "B"]  # alternating, starting opposite to the query's right answer (A)
    for k, answer in enumerate(answers):  # each demo's answer names the slot its better response is in
        a, b = _shown([ctx[1 + 2 * k]])
        assert (a, b) == ((f"win{k}", f"lose{k}") if answer == "A" else (f"lose{k}", f"win{k}"))
    assert _shown([ctx[-1]]) == ("W", "L")
    assert _shown([ranked_fewshot_context(demos, RankedPair("q", "W", "L"), "r", False)[-1]]) == ("L", "W")


def test_label_words_come_from_the_caller_and_must_differ(tiny_engine: TransformersEngine) -> None:
    convs = [[{"role": "user", "content": "Is Paris in France?"}], [{"role": "user", "content": "hello"}]]
    yes = tiny_engine.label_probability(convs, YES_NO)
    no = tiny_engine.label_probability(convs, ("No", "Yes"))
    assert no == pytest.approx([1 - p for p in yes], abs=1e-6)
    logits = tiny_engine._last_logits(convs)
    a, b = tiny_engine.tokenizer.encode("A", add_special_tokens=False)[0], \
        tiny_engine.tokenizer.encode("B", add_special_tokens=False)[0]
    want = torch.softmax(logits[:, [a, b]], dim=-1)[:, 0]
    assert tiny_engine.label_probability(convs, AB) == pytest.approx(want.tolist(), abs=1e-6)
    readout = tiny_engine.open_readout(convs)
    assert readout.label_probability([[]], AB)[0].tolist() == pytest.approx(want.tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="same token"):  # "Yes!" starts with the token of "Yes"
        readout.label_probability([[]], ("Yes", "Yes!"))
    readout.close()
    with pytest.raises(ValueError, match="same token"):
        tiny_engine.label_probability(convs, ("Yes", "Yes!"))
    with pytest.raises(ValueError, match="blank"):
        label_token_ids(tiny_engine.tokenizer, ("Yes", " "))
    assert first_of_two(math.log(0.2), math.log(0.6)) == pytest.approx(0.25)
    assert first_of_two(0.0, 2000.0) == pytest.approx(0.0) and first_of_two(2000.0, 0.0) == 1.0


def _pairs(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"It is {i + 7}."}
            for i in range(n)]


def test_ranked_compile_on_the_tiny_model(tiny_engine: TransformersEngine) -> None:
    e = tiny_engine
    examples = [LabelledExample(p["prompt"], r, good) for p in _pairs(5)
                for r, good in ((p["chosen"], True), (p["rejected"], False))]
    compiled = compile_activation_rm(lambda call: call(e), examples, "Is it right?",
                                     CompileSettings(num_heads=3, iterations=6, format="ranked"),
                                     (e.num_layers, e.num_heads, e.head_dim, e.max_model_len), "tiny")
    info = compiled.info
    assert compiled.format == "ranked" and info["labels"] == ["A", "B"]
    assert info["pool"] == 10 and info["pairs"] == 5 and info["contexts"] == 5  # every pair in both orders
    assert CompiledARM.from_bytes(compiled.to_bytes()).format == "ranked"
    with pytest.raises(ValueError, match="ranked format needs"):  # no prompt has both labels
        compile_activation_rm(lambda call: call(e), [LabelledExample(f"p{i}", "r", i % 2 == 0) for i in range(6)],
                              "r", CompileSettings(format="ranked"),
                              (e.num_layers, e.num_heads, e.head_dim, e.max_model_len), "tiny")


RANKED_BODY = {"name": "ranked", "rubric": "Is the answer right?",
               "activation_rm": {"format": "ranked", "pairs": _pairs(4), "num_heads": 3, "iterations": 6}}


def _wait_job(client: TestClient, job_id: str, timeout: float = 90) -> dict[str, object]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_ranked_profile_compiles_and_serves_through_the_api(client: TestClient,
                                                             tiny_engine: TransformersEngine) -> None:
    r = client.post("/profiles", json=RANKED_BODY)
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    shown = client.get("/profiles/ranked").json()
    assert shown["spec"]["activation_rm"]["format"] == "ranked" and shown["compiled"]["format"] == "ranked"
    rec = client.app.state.runtime.store.get("ranked")  # type: ignore[attr-defined]
    compiled = CompiledARM.from_bytes(rec.tensors)
    assert compiled.info["format"] == "ranked" and compiled.info["pool"] == 8 and compiled.heads

    responses = ["It is 4.", "It is 10.", "Four."]
    body = {"prompt": "What is 3 plus one?", "responses": responses, "method": "activation_rm", "profile": "ranked"}
    out = client.post("/score", json=body)
    assert out.status_code == 200, out.text
    scores = out.json()["scores"]
    assert sum(scores) == pytest.approx(1.5, abs=1e-5)  # mean win probabilities of three responses
    want = ranked_scores(tiny_engine, body["prompt"], responses, "Is the answer right?",  # type: ignore[arg-type]
                         compiled.scoring_steering())
    assert scores == pytest.approx(want, abs=1e-5)
    zero_shot = ranked_scores(tiny_engine, body["prompt"], responses, "Is the answer right?")  # type: ignore[arg-type]
    assert scores != pytest.approx(zero_shot, abs=1e-6)  # the heads are patched
    assert out.json()["ranking"] == sorted(range(3), key=lambda i: -scores[i])
    one = client.post("/score", json={**body, "responses": ["It is 4."]}).json()
    assert one["scores"] == [0.5]
    many = client.post("/score", json={**body, "responses": [f"It is {i}." for i in range(17)]})
    assert many.status_code == 422 and many.json()["error"]["type"] == "too_many_responses"


@pytest.mark.parametrize("change", [
    {"format": "pairwise"},
    {"format": None},
    {"pairs": [], "examples": [{"prompt": f"q{i}", "response": "r", "label": "good" if i % 2 else "bad"}
                               for i in range(6)]},  # ranked, but no prompt has both labels
    {"pairs": _pairs(1), "examples": [{"prompt": "q1", "response": "r", "label": "good"},
                                      {"prompt": "q2", "response": "r", "label": "bad"}]},  # one pair only
])
def test_bad_format_settings_are_422(client: TestClient, change: dict[str, object]) -> None:
    body = {**RANKED_BODY, "activation_rm": {**RANKED_BODY["activation_rm"], **change}}  # type: ignore[dict-item]
    r = client.post("/profiles", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request" and "format" in r.json()["error"]["message"]
    assert client.get("/jobs").json() == []


def test_a_stored_profile_without_format_reads_as_scalar(tmp_path: Path, tiny_model_dir: Path,
                                                         tiny_engine: TransformersEngine) -> None:
    """A row written before the option: spec without ``format``, compiled info without it either."""
    e = tiny_engine
    examples = [LabelledExample(p["prompt"], r, good) for p in _pairs(3)
                for r, good in ((p["chosen"], True), (p["rejected"], False))]
    compiled = compile_activation_rm(lambda call: call(e), examples, "Is it right?",
                                     CompileSettings(num_heads=2, iterations=4),
                                     (e.num_layers, e.num_heads, e.head_dim, e.max_model_len), str(tiny_model_dir))
    compiled.info = {k: v for k, v in compiled.info.items() if k not in ("format", "labels")}
    spec = {"rubric": "Is it right?", "activation_rm": {
        "examples": [], "pairs": _pairs(3), "num_heads": 2, "shots_per_context": 4, "iterations": 4,
        "objective": "ranking", "steer_strength": 4.0, "seed": 0}}
    client = open_client(make_settings(tmp_path, tiny_model_dir))
    try:
        client.app.state.runtime.store.create("old", spec, compiled.to_bytes())  # type: ignore[attr-defined]
        assert client.get("/profiles/old").json()["spec"]["activation_rm"]["format"] == "scalar"
        responses = ["It is 4.", "It is 10."]
        out = client.post("/score", json={"prompt": "What is 3 plus one?", "responses": responses,
                                          "method": "activation_rm", "profile": "old"})
        assert out.status_code == 200, out.text
        want = e.label_probability([judge_conversation("What is 3 plus one?", r, "Is it right?") for r in responses],
                                   YES_NO, compiled.scoring_steering())
        assert out.json()["scores"] == pytest.approx(want, abs=1e-5)
    finally:
        client.__exit__(None, None, None)
