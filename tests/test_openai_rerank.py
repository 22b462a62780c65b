"""``POST /v1/rerank``: /score's scoring registry in the rerank shape, through the real app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.reward.embedded_rm import build_rm_folder, save_head

from .conftest import make_settings

MODEL = "tiny-chat"
QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Yes", "No. The answer is No.", "hello world"]


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    head = tmp_path_factory.mktemp("head") / "head.safetensors"
    save_head(torch.randn(hidden, generator=torch.Generator().manual_seed(5), dtype=torch.float64), head, {})
    return build_rm_folder(tiny_model_dir, head, tmp_path_factory.mktemp("rm") / "tiny-rm")


@pytest.fixture
def rm_client(tmp_path: Path, tiny_model_dir: Path, rm_dir: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path, tiny_model_dir, reward_model=str(rm_dir), served_model_name=MODEL),
                     drain_s=5.0)
    with TestClient(app) as c:
        assert app.state.runtime.wait_loaded(60)
        yield c


def test_rerank_is_score_ranked(rm_client: TestClient, rm_dir: Path) -> None:
    scored = rm_client.post("/score", json={"prompt": QUERY, "responses": DOCS, "method": "reward_model"}).json()
    r = rm_client.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == scored["ranking"]
    assert [x["relevance_score"] for x in body["results"]] == pytest.approx(
        [scored["scores"][i] for i in scored["ranking"]], abs=1e-6)
    assert body["results"][0]["document"]["text"] == DOCS[scored["ranking"][0]]
    assert body["model"] == str(rm_dir) and body["alignserve"]["method"] == "reward_model"
    top = rm_client.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": 2,
                                             "return_documents": False}).json()
    assert [x["index"] for x in top["results"]] == scored["ranking"][:2] and top["results"][0]["document"] is None
    assert 'route="/v1/rerank"' in rm_client.get("/metrics").text


def test_rerank_with_the_judge_matches_score(rm_client: TestClient) -> None:
    scored = rm_client.post("/score", json={"prompt": QUERY, "responses": DOCS, "rubric": "Is it correct?"}).json()
    body = rm_client.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCS,
                                              "alignserve": {"method": "judge", "rubric": "Is it correct?"}}).json()
    assert [x["index"] for x in body["results"]] == scored["ranking"]
    assert body["alignserve"]["rubric"] == scored["rubric"] and body["model"] == MODEL


def test_rerank_errors_are_openai_shaped(rm_client: TestClient, client: TestClient) -> None:
    def error(c: TestClient, status: int, **body: object) -> dict[str, object]:
        r = c.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCS, **body})
        assert r.status_code == status, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        return r.json()["error"]  # type: ignore[no-any-return]

    assert error(rm_client, 404, model="other")["code"] == "model_not_found"
    assert error(rm_client, 400, documents=[])["param"] == "documents"
    assert error(rm_client, 400, alignserve={"profile": "ja"})["code"] == "not_applicable"  # reward model: no profile
    assert error(rm_client, 400, documents=["hello world " * 300])["code"] == "context_length_exceeded"
    # a server without a reward model (the plain fixture) says so
    r = client.post("/v1/rerank", json={"model": client.get("/v1/models").json()["data"][0]["id"], "query": QUERY,
                                        "documents": DOCS})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_reward_model"
