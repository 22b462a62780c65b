"""Activation Reward Models: head selection, compilation, scoring, steering, persistence, bad input."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.alignment.head_selection import (
    ReinforceConfig,
    label_log_likelihood,
    mass_mean_directions,
    pair_accuracy,
    preference_pairs,
    ranking_reward,
    reinforce_head_selection,
    top_heads,
)
from service.engines.transformers.engine import TransformersEngine
from service.reward.activation_rm import (
    ActivationRMScorer,
    CompiledARM,
    CompileSettings,
    LabelledExample,
    compile_activation_rm,
    head_patches,
    select_heads,
    selection_pool,
    selection_reward,
)
from service.reward.judge import YES_NO, GenerativeJudge, judge_conversation

from .conftest import make_settings, open_client


def test_reinforce_recovers_planted_heads_from_a_noisy_reward() -> None:
    planted = [3, 17, 29]
    gen = torch.Generator().manual_seed(1)

    def evaluate(masks: torch.Tensor) -> torch.Tensor:
        useful = masks[:, planted].sum(1)
        harmful = masks.sum(1) - useful
        return useful - 0.2 * harmful + 0.3 * torch.randn(masks.shape[0], generator=gen)

    theta = reinforce_head_selection(40, evaluate, ReinforceConfig(iterations=150, samples=6, seed=0))
    assert sorted(top_heads(theta, 3)) == planted
    assert torch.sigmoid(theta[planted]).min() > 0.9


def test_label_log_likelihood_and_mass_mean_directions_by_hand() -> None:
    p = torch.tensor([[0.9, 0.2], [0.5, 0.5]])
    ll = label_log_likelihood(p, torch.tensor([True, False]))
    assert ll.tolist() == pytest.approx([float(torch.log(torch.tensor(0.9)) + torch.log(torch.tensor(0.8))) / 2,
                                         float(torch.log(torch.tensor(0.5)))], abs=1e-6)
    # head 0 separates the labels along x, head 1 not at all
    acts = torch.tensor([[[2.0, 0.0], [1.0, 1.0]], [[4.0, 0.0], [1.0, 1.0]], [[-2.0, 0.0], [1.0, 1.0]],
                         [[-4.0, 0.0], [1.0, 1.0]]])
    unit, sigma = mass_mean_directions(acts, torch.tensor([True, True, False, False]))
    assert unit[0].tolist() == pytest.approx([1.0, 0.0])
    assert unit[1].tolist() == [0.0, 0.0]
    assert sigma[0] == pytest.approx(3.1622776, abs=1e-5)  # std of (2, 4, -2, -4)
    with pytest.raises(ValueError):
        mass_mean_directions(acts, torch.tensor([True] * 4))


def test_selection_finds_the_only_heads_that_matter_in_a_tiny_model(tiny_model_dir: Path) -> None:
    """A tiny model whose ``o_proj`` ignores all heads but two: patching any other head cannot
    change the readout, so the selection must rank the two planted heads first."""
    engine = TransformersEngine(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=256)
    planted = {(0, 2), (1, 1)}
    d = engine.head_dim
    with torch.no_grad():
        for layer in range(engine.num_layers):
            w = engine.model.model.layers[layer].self_attn.o_proj.weight
            for h in range(engine.num_heads):
                if (layer, h) not in planted:
                    w[:, h * d:(h + 1) * d] = 0
    means = 4.0 * torch.randn(engine.num_layers, engine.num_heads, d, generator=torch.Generator().manual_seed(0))
    queries = [judge_conversation(f"question {i}?", f"answer {i} " * (1 + i % 4), "Is it good?") for i in range(12)]
    readout = engine.open_readout(queries)
    yes_no = partial(readout.label_probability, labels=YES_NO)
    mask = torch.zeros(engine.num_layers * engine.num_heads)
    for layer, h in planted:
        mask[layer * engine.num_heads + h] = 1
    singles = torch.eye(engine.num_layers * engine.num_heads)
    effect = (readout.label_probability([head_patches(means, m) for m in singles], YES_NO)
              - readout.label_probability([[]], YES_NO)).abs().amax(1)
    moves = {(i // engine.num_heads, i % engine.num_heads) for i in range(len(singles)) if effect[i] > 1e-3}
    assert moves == planted and float(effect.max()) > 0.1  # the set-up: only the planted heads matter
    p = readout.label_probability([[], head_patches(means, mask)], YES_NO)
    labels = p[1] > p[0]  # what the planted patch pushes toward: only those heads can get there
    assert 0 < int(labels.sum()) < len(queries) or bool((p[1] - p[0]).abs().min() > 1e-3)
    prompts = [f"question {i}?" for i in range(12)]
    # likelihood: labels = where the planted patch pushes P(Yes) up
    likelihood = selection_reward("likelihood", labels, prompts)
    chosen, zero, patched = select_heads(yes_no, means, likelihood,
                                         ReinforceConfig(iterations=60, samples=4, seed=0), max_heads=4)
    ranked = {(i // engine.num_heads, i % engine.num_heads) for i in chosen}
    assert ranked == planted  # both, and nothing else (seeds 0-2 all give this)
    assert float(label_log_likelihood(patched.unsqueeze(0), labels)[0]) > \
        float(label_log_likelihood(zero.unsqueeze(0), labels)[0])
    # ranking: labels = the top half when only head (0, 2) is patched (patching both planted heads
    # makes every readout identical), an order the unpatched model does not have
    one = torch.zeros_like(mask)
    one[2] = 1
    p_one = yes_no([head_patches(means, one)])[0]
    top = p_one > p_one.median()
    good, bad = preference_pairs(prompts, top)
    assert float(pair_accuracy(p[0], good, bad)) < 0.9 and float(pair_accuracy(p_one, good, bad)) == 1.0
    chosen, zero, patched = select_heads(yes_no, means, selection_reward("ranking", top, prompts),
                                         ReinforceConfig(iterations=60, samples=4, seed=0), max_heads=4)
    readout.close()
    ranked = {(i // engine.num_heads, i % engine.num_heads) for i in chosen}
    assert ranked == {(0, 2)}  # the head that makes this order; adding (1, 1) breaks it
    assert float(pair_accuracy(patched, good, bad)) > float(pair_accuracy(zero, good, bad))


def test_preference_pairs_ranking_reward_and_pair_accuracy_by_hand() -> None:
    labels = torch.tensor([True, False, False, True, True])
    good, bad = preference_pairs(["a", "a", "a", "b", "c"], labels)
    assert list(zip(good.tolist(), bad.tolist(), strict=True)) == [(0, 1), (0, 2)]  # "b", "c" have one label
    good, bad = preference_pairs(["a", "b", "c", "d", "e"], labels)  # no prompt with both: all pairs
    assert sorted(zip(good.tolist(), bad.tolist(), strict=True)) == [(0, 1), (0, 2), (3, 1), (3, 2), (4, 1), (4, 2)]
    with pytest.raises(ValueError):
        preference_pairs(["a", "b"], torch.tensor([True, True]))
    p = torch.tensor([[0.8, 0.5, 0.2]], dtype=torch.float64)
    g, b = torch.tensor([0, 0]), torch.tensor([1, 2])
    z = torch.log(p / (1 - p))[0]
    want = (torch.nn.functional.logsigmoid(z[0] - z[1]) + torch.nn.functional.logsigmoid(z[0] - z[2])) / 2
    assert float(ranking_reward(p, g, b)[0]) == pytest.approx(float(want), abs=1e-9)
    # a judge that says Yes to everything, recalibrated by a uniform shift of every logit: the
    # ranking reward does not move, the label likelihood rewards it
    yes = torch.tensor([[0.95, 0.9, 0.9]], dtype=torch.float64)
    shifted = torch.sigmoid(torch.log(yes / (1 - yes)) - 3.0)
    assert float(ranking_reward(shifted, g, b)[0]) == pytest.approx(float(ranking_reward(yes, g, b)[0]), abs=1e-6)
    y = torch.tensor([True, False, False])
    assert float(label_log_likelihood(shifted, y)[0]) > float(label_log_likelihood(yes, y)[0]) + 0.5
    assert pair_accuracy(torch.tensor([[0.8, 0.9, 0.2]]), g, b).tolist() == [0.5]


def test_selection_pool_keeps_prompts_with_both_labels_together() -> None:
    ex = [LabelledExample("p1", "a", True), LabelledExample("p1", "b", False), LabelledExample("p2", "c", True),
          LabelledExample("p3", "d", False), LabelledExample("p4", "e", True), LabelledExample("p4", "f", False)]
    order = [2, 0, 3, 5, 1, 4]
    assert selection_pool(ex, order, 4) == [0, 1, 5, 4]  # p1 then p4, whole, in order of first appearance
    assert selection_pool(ex, order, 5) == [0, 1, 5, 4, 2]
    assert selection_pool(ex, order, 3) == [0, 1, 2]  # p4 no longer fits; filled from the order
    assert sorted(selection_pool(ex, order, 10)) == list(range(6))


def _examples(n: int) -> list[LabelledExample]:
    return [LabelledExample(f"What is {i} plus one?", f"It is {i + 1}." if i % 2 else f"It is {i + 7}.", bool(i % 2))
            for i in range(n)]


def test_compile_roundtrip_and_no_heads_scores_like_the_judge(tiny_engine: TransformersEngine) -> None:
    e = tiny_engine
    progress: list[tuple[str, int, int]] = []
    compiled = compile_activation_rm(lambda call: call(e), _examples(10), "Is it right?",
                                     CompileSettings(num_heads=3, iterations=6), (e.num_layers, e.num_heads,
                                                                                 e.head_dim, e.max_model_len),
                                     "tiny", lambda *a: progress.append(a))
    assert 1 <= len(compiled.heads) <= 3 and len(compiled.steering_heads) == 3
    assert compiled.means.shape == (len(compiled.heads), e.head_dim)
    assert compiled.directions.shape == (len(compiled.steering_heads), e.head_dim)
    assert compiled.info["objective"] == "ranking" and compiled.info["pairs"] > 0
    assert [p[0] for p in progress][0] == "means" and progress[-1][1] == progress[-1][2]
    back = CompiledARM.from_bytes(compiled.to_bytes())
    assert back.heads == compiled.heads and back.info == compiled.info
    assert back.steering_heads == compiled.steering_heads
    assert torch.equal(back.means, compiled.means) and torch.equal(back.sigmas, compiled.sigmas)
    responses = ["It is 4.", "It is 10."]
    judge = GenerativeJudge().score(e, "What is 3 plus one?", responses, "Is it right?")
    empty = CompiledARM([], torch.zeros(0, e.head_dim), torch.zeros(0, e.head_dim), torch.zeros(0))
    assert ActivationRMScorer().score(e, "What is 3 plus one?", responses, "Is it right?", empty) == judge
    patched = ActivationRMScorer().score(e, "What is 3 plus one?", responses, "Is it right?", back)
    assert patched != pytest.approx(judge, abs=1e-6)
    assert back.generation_steering(0.0) == []
    assert all(v.position == "generated" and v.scale == 2.0 for v in back.generation_steering(2.0))
    with pytest.raises(ValueError):
        compile_activation_rm(lambda call: call(e), _examples(10)[1::2], "r", CompileSettings(),
                              (e.num_layers, e.num_heads, e.head_dim, e.max_model_len), "tiny")


PRINCIPLE = "Always answer in Japanese."
ARM_BODY = {
    "name": "arith",
    "rubric": "Is the answer right?",
    "activation_rm": {
        "examples": [{"prompt": f"What is {i} plus one?", "response": f"It is {i + 1 if i % 2 else i + 7}.",
                      "label": "good" if i % 2 else "bad"} for i in range(8)],
        "pairs": [{"prompt": "What is 2 plus 2?", "chosen": "It is 4.", "rejected": "It is 5."}],
        "num_heads": 3, "iterations": 8, "steer_strength": 6.0,
    },
}


def _wait_job(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_compile_job_then_score_and_steer_then_survive_restart(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = make_settings(tmp_path, tiny_model_dir)
    client = open_client(settings)
    try:
        r = client.post("/profiles", json=ARM_BODY)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/jobs/{r.json()['id']}"
        job = _wait_job(client, r.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["profile_ref"] == "arith@1" and job["done"] == job["total"] > 0
        prof = client.get("/profiles/arith").json()
        assert prof["compiled"]["examples"] == 10 and 1 <= len(prof["compiled"]["heads"]) <= 3
        assert prof["compiled"]["objective"] == "ranking" and prof["compiled"]["patched_pair_accuracy"] is not None
        assert len(prof["spec"]["activation_rm"]["examples"]) == 8  # the examples persist with the profile

        body = {"prompt": "What is 3 plus one?", "responses": ["It is 4.", "It is 10."], "profile": "arith"}
        arm = client.post("/score", json={**body, "method": "activation_rm"}).json()
        judge = client.post("/score", json={**body, "method": "judge"}).json()
        assert arm["method"] == "activation_rm" and arm["profile"] == "arith@1"
        assert arm["scores"] != pytest.approx(judge["scores"], abs=1e-6)

        gen = {"prompt": "What is 5 plus one?", "max_tokens": 12, "profile": "arith"}
        steered = client.post("/generate", json=gen).json()
        off = client.post("/generate", json={**gen, "steer_strength": 0}).json()
        plain = client.post("/generate", json={**gen, "profile": None}).json()
        assert steered["alignment"]["steered_heads"] == len(prof["compiled"]["steer_heads"]) == 3
        assert steered["alignment"]["steer_strength"] == 6.0
        assert steered["alignment"]["method"] == "activation_steering"
        assert off["alignment"]["steered_heads"] == 0 and off["text"] == plain["text"]
        assert steered["text"] != plain["text"]
        again_steered = client.post("/generate", json=gen).json()
        assert again_steered["text"] == steered["text"]  # deterministic (greedy)

        # the same examples with a principle: the same compiled heads, plus Linear Alignment
        la_body = {**ARM_BODY, "name": "arith-la", "principle": PRINCIPLE, "la": {"strength": 8.0}}
        assert _wait_job(client, client.post("/profiles", json=la_body).json()["id"])["status"] == "succeeded"
        prof_la = client.get("/profiles/arith-la").json()
        assert prof_la["compiled"]["steer_heads"] == prof["compiled"]["steer_heads"]
        both = client.post("/generate", json={**gen, "profile": "arith-la"}).json()
        la_only = client.post("/generate", json={**gen, "profile": "arith-la", "steer_strength": 0}).json()
        inline_la = client.post("/generate", json={**gen, "profile": {"principle": PRINCIPLE,
                                                                      "la": {"strength": 8.0}}}).json()
        assert both["alignment"]["method"] == "linear_alignment+activation_steering"
        assert both["alignment"]["principle"] == PRINCIPLE and both["alignment"]["steered_heads"] == 3
        assert la_only["alignment"]["method"] == "linear_alignment" and la_only["text"] == inline_la["text"]
        assert la_only["text"] != plain["text"]  # LA alone changes the answer
        assert both["text"] != steered["text"]  # and it changes the steered one: LA ran with the steering
        assert both["text"] != la_only["text"]
    finally:
        client.__exit__(None, None, None)

    again = open_client(settings)  # same database: the compiled profile is still there
    try:
        arm2 = again.post("/score", json={**body, "method": "activation_rm"}).json()
        assert arm2["scores"] == pytest.approx(arm["scores"], abs=1e-6)
        assert again.get("/jobs").json()[0]["status"] == "succeeded"
    finally:
        again.__exit__(None, None, None)


def test_steering_together_with_linear_alignment(client: TestClient) -> None:
    r = client.post("/profiles", json={**ARM_BODY, "name": "both", "principle": "Be concise."})
    assert _wait_job(client, r.json()["id"])["status"] == "succeeded"
    out = client.post("/generate", json={"prompt": "Hello?", "max_tokens": 6, "profile": "both"}).json()
    assert out["alignment"]["method"] == "linear_alignment+activation_steering"
    assert out["alignment"]["principle"] == "Be concise." and out["alignment"]["steered_heads"] >= 1


def test_interrupted_job_resumes_after_restart(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = make_settings(tmp_path, tiny_model_dir)
    client = open_client(settings)
    slow = {**ARM_BODY, "activation_rm": {**ARM_BODY["activation_rm"], "iterations": 400}}  # type: ignore[dict-item]
    job_id = client.post("/profiles", json=slow).json()["id"]
    deadline = time.time() + 30
    while client.get(f"/jobs/{job_id}").json()["status"] != "running" and time.time() < deadline:
        time.sleep(0.05)
    client.__exit__(None, None, None)  # shut down mid-compilation
    again = open_client(settings)
    try:
        job = _wait_job(again, job_id, timeout=120)
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        assert again.get("/profiles/arith").json()["compiled"] is not None
    finally:
        again.__exit__(None, None, None)


def test_cancel_a_job(client: TestClient) -> None:
    slow = {**ARM_BODY, "activation_rm": {**ARM_BODY["activation_rm"], "iterations": 500}}  # type: ignore[dict-item]
    first = client.post("/profiles", json=slow).json()["id"]
    second = client.post("/profiles", json={**slow, "name": "queued"}).json()["id"]
    assert client.delete(f"/jobs/{second}").json()["status"] == "cancelled"  # still queued: at once
    client.delete(f"/jobs/{first}")
    assert _wait_job(client, first)["status"] == "cancelled"
    assert client.get("/profiles/arith").status_code == 404
    assert client.delete("/jobs/job-nope").status_code == 404
    assert client.get("/jobs/job-nope").status_code == 404


@pytest.mark.parametrize("change, status, kind", [
    ({"examples": []}, 422, "invalid_request"),  # 1 pair = 2 examples < 4
    ({"examples": [{"prompt": "q", "response": "r", "label": "good"}] * 5, "pairs": []}, 422, "invalid_request"),
    ({"examples": [{"prompt": "q", "response": "r", "label": "maybe"}] * 5}, 422, "invalid_request"),
    ({"examples": [{"prompt": "q", "response": "r", "label": "good"}] * 400, "pairs":
      [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 100}, 422, "invalid_request"),
    ({"examples": [{"prompt": "q " * 2000, "response": "r", "label": "good"}] * 2 +
      [{"prompt": "q", "response": "r", "label": "bad"}] * 2}, 413, "example_too_long"),
    ({"num_heads": 0}, 422, "invalid_request"),
    ({"objective": "accuracy"}, 422, "invalid_request"),
])
def test_bad_example_sets_are_rejected(client: TestClient, change: dict[str, object], status: int,
                                       kind: str) -> None:
    body = {**ARM_BODY, "activation_rm": {**ARM_BODY["activation_rm"], **change}}  # type: ignore[dict-item]
    r = client.post("/profiles", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind
    assert client.get("/jobs").json() == []


def test_activation_rm_needs_a_compiled_stored_profile(client: TestClient) -> None:
    client.post("/profiles", json={"name": "plain", "rubric": "Is it right?"})
    body = {"prompt": "q", "responses": ["a"], "method": "activation_rm"}
    assert client.post("/score", json={**body, "profile": "plain"}).json()["error"]["type"] == "profile_not_compiled"
    assert client.post("/score", json=body).status_code == 422
    inline = {"rubric": "x", "activation_rm": ARM_BODY["activation_rm"]}
    r = client.post("/generate", json={"prompt": "hi", "profile": inline})
    assert r.status_code == 422 and "inline" in r.json()["error"]["message"]
