"""English reward model: folder assembly, scoring against a float64 reference, batching, the
Bradley-Terry fit, and ``POST /score`` with ``method: "reward_model"`` through the real app."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.train_reward_head import fit_bt
from service.api.app import create_app
from service.reward.embedded_rm import SHIPPED_HEAD, build_rm_folder, save_head
from service.reward.reward_model import TransformersRewardModel, length_batches, rm_conversation
from service.scheduling.worker import Overloaded

from .conftest import make_settings

CONVS = [
    rm_conversation("What is the capital of France?", "Paris is the capital of France."),
    rm_conversation("Explain what a CPU is.", "A central processing unit runs instructions, one after another."),
    rm_conversation("hello", "Yes"),
    rm_conversation("Be concise.", "No. The answer is No. " * 6),
]


@pytest.fixture(scope="module")
def head(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    w = torch.randn(hidden, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    path = tmp_path_factory.mktemp("head") / "head.safetensors"
    save_head(w, path, {"test": True})
    return path, w.float().double()  # the file stores float32


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir: Path, head: tuple[Path, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rm_folder(tiny_model_dir, head[0], tmp_path_factory.mktemp("rm") / "tiny-rm")


@pytest.fixture(scope="module")
def rm(rm_dir: Path) -> Iterator[TransformersRewardModel]:
    runner = TransformersRewardModel(str(rm_dir), device="cpu", dtype="float64", max_length=200,
                                     tokens_per_batch=64, max_pending=2, name="tiny-rm")
    yield runner
    runner.close()


def test_length_batches_respect_budget_and_group_similar_lengths() -> None:
    lengths = [5, 50, 6, 7, 49, 200, 8]
    batches = length_batches(lengths, tokens_per_batch=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100
    assert [5] in batches  # longer than the budget: alone
    assert {0, 2, 3, 6} == set(batches[0])  # the short ones together


def test_folder_is_a_sequence_classifier_that_links_the_base_weights(rm_dir: Path, tiny_model_dir: Path) -> None:
    cfg = json.loads((rm_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForSequenceClassification"] and cfg["num_labels"] == 1
    index = json.loads((rm_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["score.weight"] != index["model.norm.weight"]
    assert not any(k.startswith("lm_head.") for k in index)
    assert (rm_dir / index["model.norm.weight"]).resolve() == (tiny_model_dir / "model.safetensors").resolve()
    assert not (rm_dir / "model.safetensors").exists()  # a plain file would make loaders skip the index


def test_rebuilding_with_the_same_head_is_a_no_op_and_a_new_head_rebuilds(
        tiny_model_dir: Path, head: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    out = build_rm_folder(tiny_model_dir, head[0], tmp_path / "rm")
    stamp = (out / "config.json").stat().st_mtime_ns
    assert build_rm_folder(tiny_model_dir, head[0], out) == out
    assert (out / "config.json").stat().st_mtime_ns == stamp
    other = tmp_path / "other.safetensors"
    save_head(torch.ones(head[1].numel()), other, {})
    build_rm_folder(tiny_model_dir, other, out)
    assert json.loads((out / "alignserve-rm.json").read_text())["head"] == str(other)


def test_rewards_match_a_float64_reference(rm: TransformersRewardModel, tiny_model_dir: Path,
                                           head: tuple[Path, torch.Tensor]) -> None:
    """Reference: the causal LM's final hidden state at the last template token, dotted with the head."""
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float64).eval()
    expected = []
    for conv in CONVS:
        ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=False, return_dict=True)["input_ids"]
        with torch.no_grad():
            h = lm(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        expected.append(float(h @ head[1]))
    got = rm.rewards(CONVS)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert len(set(round(g, 6) for g in got)) == len(got)  # not a constant


def test_batched_scores_equal_one_at_a_time(rm: TransformersRewardModel) -> None:
    together = rm.rewards(CONVS)  # different lengths: several left-padded batches
    alone = [rm.rewards([c])[0] for c in CONVS]
    assert together == pytest.approx(alone, rel=1e-7, abs=1e-7)
    assert rm.features(CONVS).shape == (len(CONVS), 64)


def test_too_long_conversation_is_refused(rm: TransformersRewardModel) -> None:
    with pytest.raises(ValueError, match="tokens"):
        rm.rewards([rm_conversation("hi", "hello world " * 200)])


def test_submit_is_bounded(rm: TransformersRewardModel) -> None:
    gate = threading.Event()
    blockers = [rm._pool.submit(gate.wait) for _ in range(1)]  # occupy the single worker thread
    futs = [rm.submit(CONVS[:1]) for _ in range(2)]
    with pytest.raises(Overloaded):
        rm.submit(CONVS[:1])
    gate.set()
    assert all(len(f.result(timeout=30)) == 1 for f in futs) and blockers[0].result() is True
    rm.submit(CONVS[:1]).result(timeout=30)  # slots were released


def test_bradley_terry_fit_recovers_a_planted_direction() -> None:
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(16, generator=g, dtype=torch.float64)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64)
    y = torch.randn(400, 16, generator=g, dtype=torch.float64)
    swap = (x @ truth) < (y @ truth)  # chosen = the one the planted reward prefers
    chosen = torch.where(swap[:, None], y, x)
    rejected = torch.where(swap[:, None], x, y)
    w = fit_bt(chosen - rejected, lam=1e-3)
    cosine = float(w @ truth / (w.norm() * truth.norm()))
    assert cosine > 0.95
    assert float(((chosen - rejected) @ w > 0).double().mean()) > 0.97


def test_shipped_head_has_provenance_and_a_held_out_score() -> None:
    meta = json.loads(SHIPPED_HEAD.meta_path.read_text())
    assert SHIPPED_HEAD.path.stat().st_size < 16_384
    assert meta["base_model"] == SHIPPED_HEAD.base_model
    assert meta["held_out"]["pairs"] >= 30 and 0.5 < meta["held_out"]["accuracy"] <= 1.0
    assert "hand-written" in meta["training_data"]["note"]


# ---- through the app ----------------------------------------------------------------------

@pytest.fixture
def rm_client(tmp_path: Path, tiny_model_dir: Path, rm_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, tiny_model_dir, reward_model=str(rm_dir))
    c = TestClient(create_app(settings, drain_s=5.0))
    c.__enter__()
    assert c.app.state.runtime.wait_loaded(60)  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.__exit__(None, None, None)


def test_score_with_reward_model_ranks_and_reports_the_model(rm_client: TestClient, rm_dir: Path) -> None:
    ready = rm_client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["reward_model"] == str(rm_dir)
    responses = ["Paris is the capital of France.", "Yes", "No. The answer is No."]
    r = rm_client.post("/score", json={"prompt": "What is the capital of France?", "responses": responses,
                                       "method": "reward_model"})
    assert r.status_code == 200, r.text
    body = r.json()
    direct = TransformersRewardModel(str(rm_dir), device="cpu", dtype="float32", max_length=256)
    expected = direct.rewards([rm_conversation("What is the capital of France?", x) for x in responses])
    direct.close()
    assert body["scores"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert body["ranking"] == sorted(range(3), key=lambda i: -expected[i])
    assert body["model"] == str(rm_dir) and body["rubric"] is None
    metrics = rm_client.get("/metrics").text
    assert "alignserve_reward_model_score_count 3.0" in metrics


def test_reward_model_bad_input_is_a_clean_4xx(rm_client: TestClient) -> None:
    base = {"prompt": "hi", "responses": ["hello"], "method": "reward_model"}
    assert rm_client.post("/score", json={**base, "rubric": "Is it good?"}).status_code == 422
    assert rm_client.post("/score", json={**base, "profile": "missing@1"}).status_code == 422
    too_long = rm_client.post("/score", json={**base, "responses": ["hello world " * 300]})
    assert too_long.status_code == 413 and too_long.json()["error"]["type"] == "prompt_too_long"
    assert rm_client.post("/score", json={**base, "responses": []}).status_code == 422


def test_without_a_reward_model_the_method_is_refused(client: TestClient) -> None:
    assert client.get("/readyz").json()["reward_model_state"] == "none"
    r = client.post("/score", json={"prompt": "hi", "responses": ["a"], "method": "reward_model"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "no_reward_model"


def test_a_reward_model_that_fails_to_load_leaves_the_server_up(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = make_settings(tmp_path, tiny_model_dir, reward_model=str(tmp_path / "nowhere"))
    with TestClient(create_app(settings, drain_s=5.0)) as c:
        assert c.app.state.runtime.wait_loaded(60)  # type: ignore[attr-defined]
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["reward_model_state"].startswith("failed")
        r = c.post("/score", json={"prompt": "hi", "responses": ["a"], "method": "reward_model"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "reward_model_unavailable"
        assert c.post("/score", json={"prompt": "hi", "responses": ["a"]}).status_code == 200  # judge still works


def test_overloaded_reward_model_answers_429(tmp_path: Path, tiny_model_dir: Path) -> None:
    class Busy:
        name, max_length = "busy", 1000

        def count_tokens(self, conversation: object) -> int:
            return 5

        def submit(self, conversations: object) -> object:
            raise Overloaded("64 reward-model calls pending")

        def close(self) -> None:
            pass

    with TestClient(create_app(make_settings(tmp_path, tiny_model_dir), drain_s=5.0,
                               reward_factory=lambda s: Busy())) as c:  # type: ignore[arg-type,return-value]
        assert c.app.state.runtime.wait_loaded(60)  # type: ignore[attr-defined]
        r = c.post("/score", json={"prompt": "hi", "responses": ["a"], "method": "reward_model"})
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
