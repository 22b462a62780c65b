"""The real FastAPI app with the tiny model, through httpx (TestClient)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi.testclient import TestClient

from .conftest import make_settings, open_client

PRINCIPLE = "Always answer in Japanese."


def sse_events(body: str) -> list[tuple[str, dict]]:
    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_health_ready_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert "/generate" in client.get("/openapi.json").json()["paths"]


def test_generate_plain_and_inline_la(client: TestClient) -> None:
    r = client.post("/generate", json={"prompt": "What is the capital of France?", "max_tokens": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["alignment"]["method"] == "none"
    assert 1 <= body["usage"]["completion_tokens"] <= 8 and body["usage"]["principle_prompt_tokens"] is None
    r = client.post("/generate", json={"prompt": "What is the capital of France?", "max_tokens": 8,
                                       "profile": {"principle": PRINCIPLE, "la": {"strength": 2.5}}})
    assert r.status_code == 200, r.text
    la = r.json()
    assert la["alignment"] == {"method": "linear_alignment", "profile": "inline", "principle": PRINCIPLE,
                               "strength_mode": "fixed", "mean_strength": 2.5, "steered_heads": 0,
                               "steer_strength": None}
    assert la["usage"]["principle_prompt_tokens"] > la["usage"]["prompt_tokens"]
    r = client.post("/generate", json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5,
                                       "profile": {"principle": PRINCIPLE, "la": {"adaptive": True}}})
    assert r.status_code == 200 and r.json()["alignment"]["strength_mode"] == "adaptive"


def test_stream_matches_non_stream(client: TestClient) -> None:
    payload = {"prompt": "Explain what a CPU is.", "max_tokens": 10, "profile": {"principle": PRINCIPLE}}
    full = client.post("/generate", json=payload).json()
    with client.stream("POST", "/generate", json={**payload, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    events = sse_events(body)
    assert events[0][0] == "start" and events[-1][0] == "done"
    text = "".join(d["text"] for e, d in events if e == "token")
    assert text == full["text"] == events[-1][1]["text"]
    assert events[-1][1]["usage"]["completion_tokens"] == full["usage"]["completion_tokens"]


def test_profiles_crud_versions_and_use(client: TestClient) -> None:
    r = client.post("/profiles", json={"name": "ja", "principle": PRINCIPLE, "la": {"strength": 1.5}})
    assert r.status_code == 201 and r.json()["ref"] == "ja@1"
    r = client.post("/profiles", json={"name": "ja", "principle": PRINCIPLE, "la": {"strength": 4.0}})
    assert r.json()["version"] == 2
    assert client.get("/profiles/ja").json()["spec"]["la"]["strength"] == 4.0
    assert client.get("/profiles/ja@1").json()["spec"]["la"]["strength"] == 1.5
    assert [p["version"] for p in client.get("/profiles/ja/versions").json()] == [1, 2]
    assert [p["ref"] for p in client.get("/profiles").json()] == ["ja@2"]
    g = client.post("/generate", json={"prompt": "hi", "max_tokens": 4, "profile": "ja@1"}).json()
    assert g["alignment"]["profile"] == "ja@1" and g["alignment"]["mean_strength"] == 1.5
    assert client.delete("/profiles/ja").status_code == 204
    assert client.get("/profiles/ja").status_code == 404
    assert client.delete("/profiles/ja").status_code == 404


def test_profiles_survive_restart(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = make_settings(tmp_path, tiny_model_dir)
    c1 = open_client(settings)
    try:
        assert c1.post("/profiles", json={"name": "short", "principle": "Answer in one short sentence.",
                                          "rubric": "Is the response one short sentence?"}).status_code == 201
    finally:
        c1.__exit__(None, None, None)
    c2 = open_client(settings)
    try:
        got = c2.get("/profiles/short").json()
        assert got["spec"]["principle"] == "Answer in one short sentence." and got["version"] == 1
        assert c2.post("/generate", json={"prompt": "hi", "max_tokens": 3, "profile": "short"}).status_code == 200
    finally:
        c2.__exit__(None, None, None)


def test_score_ranks_candidates(client: TestClient) -> None:
    r = client.post("/score", json={"prompt": "What is the capital of France?",
                                    "responses": ["Paris.", "Berlin.", "I do not know."]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "judge" and len(body["scores"]) == 3
    assert all(0 < s < 1 for s in body["scores"])
    assert sorted(body["ranking"]) == [0, 1, 2]
    assert body["scores"][body["ranking"][0]] == max(body["scores"])
    client.post("/profiles", json={"name": "judge1", "principle": PRINCIPLE})
    r = client.post("/score", json={"prompt": "q", "responses": ["a"], "profile": "judge1"})
    assert r.json()["rubric"] == f"Does the response follow this principle: {PRINCIPLE}"


def test_bad_input_is_4xx_with_json_error(client: TestClient) -> None:
    cases = [
        ({"prompt": ""}, 422),
        ({"prompt": "   "}, 422),
        ({}, 422),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 422),
        ({"messages": [{"role": "assistant", "content": "b"}]}, 422),
        ({"prompt": "a", "max_tokens": 0}, 422),
        ({"prompt": "a", "max_tokens": 65}, 422),  # over this server's max_tokens_limit (64)
        ({"prompt": "a", "temperature": -1}, 422),
        ({"prompt": "a", "top_p": 0}, 422),
        ({"prompt": "a", "stop": [""]}, 422),
        ({"prompt": "a", "profile": "nope"}, 404),
        ({"prompt": "a", "profile": "Bad/../name"}, 422),
        ({"prompt": "a", "profile": {"principle": "  "}}, 422),
        ({"prompt": "a", "profile": {"principle": "p", "la": {"strength": -2}}}, 422),
        ({"prompt": "a", "unknown_field": 1}, 422),
        ({"prompt": "word " * 400}, 413),  # longer than the tiny model's 256-token context
    ]
    for payload, status in cases:
        r = client.post("/generate", json=payload)
        assert r.status_code == status, (payload, r.status_code, r.text)
        err = r.json()["error"]
        assert err["type"] and err["message"], payload
    assert client.post("/generate", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422
    assert client.post("/score", json={"prompt": "q", "responses": []}).status_code == 422
    assert client.post("/score", json={"prompt": "q", "responses": ["a"], "method": "nope"}).status_code == 422
    assert client.post("/profiles", json={"name": "UPPER", "principle": "x"}).status_code == 422
    assert client.post("/profiles", json={"name": "../etc", "principle": "x"}).status_code == 422
    big = {"prompt": "x" * 2_000_000}
    assert client.post("/generate", json=big).status_code == 413


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/generate", json={"prompt": "hello", "max_tokens": 4, "profile": {"principle": PRINCIPLE}})
    client.post("/generate", json={"prompt": "", "max_tokens": 4})
    client.post("/score", json={"prompt": "q", "responses": ["a", "b"]})
    text = client.get("/metrics").text
    for needle in [
        'alignserve_requests_total{profile="inline",route="/generate",status="200"} 1.0',
        'alignserve_requests_total{profile="none",route="/generate",status="422"} 1.0',
        "alignserve_time_to_first_token_seconds_count 1.0",
        "alignserve_inter_token_latency_seconds_count",
        'alignserve_la_strength_count{mode="fixed"} 1.0',
        'alignserve_generated_tokens_total{alignment="linear_alignment"}',
        "alignserve_prompt_tokens_total",
        "alignserve_queue_depth 0.0",
        "alignserve_model_ready 1.0",
        'alignserve_score_count{method="judge"} 2.0',
        'alignserve_request_latency_seconds_bucket{le="0.01",route="/generate"}',
    ]:
        assert needle in text, needle


def test_overload_returns_429_with_retry_after(tmp_path: Path, tiny_model_dir: Path) -> None:
    import threading

    c = open_client(make_settings(tmp_path, tiny_model_dir, max_queue=1, max_batch_size=1))
    try:
        services = c.app.state.runtime  # type: ignore[attr-defined]
        gate = threading.Event()
        real_generate = services.engine.generate

        def slow_generate(reqs):  # hold the engine so the queue fills up
            gate.wait(20)
            return real_generate(reqs)

        services.engine.generate = slow_generate
        results: list[int] = []

        def call() -> None:
            results.append(c.post("/generate", json={"prompt": "hi", "max_tokens": 2}).status_code)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.3)
        r = c.post("/generate", json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 429 and r.headers["retry-after"] == "2"
        gate.set()
        for t in threads:
            t.join(30)
        assert results.count(200) >= 2 and set(results) <= {200, 429}
    finally:
        c.__exit__(None, None, None)


def test_readyz_reports_loading_and_failure(tmp_path: Path, tiny_model_dir: Path) -> None:
    from service.api.app import create_app

    settings = make_settings(tmp_path, tmp_path / "does-not-exist")
    with TestClient(create_app(settings)) as bad:
        bad.app.state.runtime.wait_loaded(30)  # type: ignore[attr-defined]
        r = bad.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        g = bad.post("/generate", json={"prompt": "hi"})
        assert g.status_code == 503 and g.json()["error"]["type"] == "model_unavailable"


def test_language_report_metrics_and_enforcement(client: TestClient) -> None:
    r = client.post("/generate", json={"prompt": "フランスの首都はどこですか？", "max_tokens": 6})
    lang = r.json()["language"]
    assert lang["prompt"] == "ja" and isinstance(lang["match"], bool)
    assert set(lang["answer_scripts"]) <= {"kana", "han", "hangul", "latin", "other", "cyrillic", "arabic",
                                          "devanagari", "greek", "hebrew", "thai"}
    # enforcement: an LA principle naming the detected language, added to the profile's own principle
    client.post("/profiles", json={"name": "fid", "principle": "Be concise.", "enforce_language": True})
    body = client.post("/generate", json={"prompt": "フランスの首都はどこですか？", "max_tokens": 4,
                                          "profile": "fid"}).json()
    assert body["alignment"]["principle"] == (
        "Be concise. Always answer in Japanese, the language of the user's message.")
    only = client.post("/generate", json={"prompt": "What is the capital of France and why?", "max_tokens": 4,
                                          "profile": {"enforce_language": True}}).json()
    assert only["alignment"]["principle"] == "Always answer in English, the language of the user's message."
    text = client.get("/metrics").text
    assert 'alignserve_language_checks_total{profile="fid"} 1.0' in text
    assert "alignserve_language_checks_total{profile=\"none\"} 1.0" in text
    mismatches = sum(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("alignserve_language_mismatch_total"))
    expected = sum(not x["language"]["match"] for x in (r.json(), body, only))
    assert mismatches == expected
