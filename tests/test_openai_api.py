"""The /v1 API with the official ``openai`` SDK against a real server (the tiny model, greedy).

Most tests share one ``alignserve serve`` child process; back-pressure, deadlines, cancellation and
API keys need to reach into the engine or the key store, so they run a real uvicorn server in this
process (``serve_in_thread``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.engines.transformers.engine import TransformersEngine

from .conftest import make_settings
from .server_proc import ServerProc, serve_in_thread, start_server
from .tiny_model import greedy_continuation

pytestmark = pytest.mark.slow

MODEL = "tiny-chat"
PRINCIPLE = "Always answer in Japanese."
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServerProc]:
    srv = start_server(tmp_path_factory.mktemp("openai-srv"), tiny_model_dir,
                       extra=["--served-model-name", MODEL, "--drain-timeout", "5"])
    try:
        with httpx.Client(base_url=srv.base, timeout=30) as c:
            assert c.post("/profiles", json={"name": "ja", "principle": PRINCIPLE}).status_code == 201
        yield srv
    finally:
        srv.proc.terminate()
        srv.proc.wait(30)


def sdk(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def native(srv: ServerProc, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{srv.base}/generate", json={"prompt": PROMPT, "max_tokens": 12, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    kw = {"max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": PROMPT}], **kw}
    return client.chat.completions.create(model=MODEL, **kw)


def metric(base: str, prefix: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


# ---- the happy paths ---------------------------------------------------------------------------


def test_models_and_served_name(server: ServerProc, tiny_model_dir: Path) -> None:
    client = sdk(server.base)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.owned_by == "alignserve" and card.model_extra["root"] == str(tiny_model_dir)
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"
    # the same id in /readyz and /generate
    assert httpx.get(f"{server.base}/readyz").json()["model"] == MODEL
    assert native(server)["model"] == MODEL


def test_chat_completion_matches_generate(server: ServerProc) -> None:
    resp = chat(sdk(server.base))
    plain = native(server)
    assert resp.object == "chat.completion" and resp.model == MODEL and resp.id.startswith("chatcmpl-gen-")
    [choice] = resp.choices
    assert choice.message.role == "assistant" and choice.message.content == plain["text"]
    assert choice.finish_reason == plain["finish_reason"] == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens == plain["usage"]["prompt_tokens"]
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12
    report = resp.model_extra["alignserve"]
    assert report["alignment"] == plain["alignment"] and report["language"] == plain["language"]
    # max_completion_tokens is the same limit; stop ends with finish_reason "stop"
    again = sdk(server.base).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_completion_tokens=12, temperature=0)
    assert again.choices[0].message.content == plain["text"]
    text = plain["text"]
    at = next(i for i in range(2, len(text) - 1) if text[i:i + 2].isascii() and text[i:i + 2].isalnum())
    stop = text[at:at + 2]
    cut = chat(sdk(server.base), stop=stop)  # a plain string is a stop too
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == text[:text.index(stop)]


def test_sampling_and_roles_map_like_generate(server: ServerProc) -> None:
    client = sdk(server.base)
    system = "Be brief."
    dev = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0, messages=[
        {"role": "developer", "content": system}, {"role": "user", "content": PROMPT}])
    as_system = native(server, prompt=None, messages=[{"role": "system", "content": system},
                                                      {"role": "user", "content": PROMPT}])
    assert dev.choices[0].message.content == as_system["text"] != native(server)["text"]
    sampled = [chat(client, temperature=1.3, top_p=0.9, seed=7).choices[0].message.content for _ in range(2)]
    same = native(server, temperature=1.3, top_p=0.9, seed=7)["text"]
    assert sampled == [same, same] and same != native(server)["text"]


def test_chat_stream_with_usage(server: ServerProc) -> None:
    client = sdk(server.base)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat(client).choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason == "length"
    assert finished[0].model_extra["alignserve"]["alignment"]["method"] == "none"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])
    without = list(chat(client, stream=True))
    assert all(c.usage is None for c in without) and without[-1].choices[0].finish_reason == "length"
    # the raw stream: `data:` lines only, ending in [DONE]
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 3, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in r.read().decode().split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks) and blocks[-1] == "data: [DONE]"


RAW = "The capital of France is"


def complete(client: openai.OpenAI, prompt: str | list[str] = RAW, **kw: Any) -> Any:
    kw = {"max_tokens": 12, "temperature": 0, **kw}
    return client.completions.create(model=MODEL, prompt=prompt, **kw)


def test_completions_continue_the_raw_prompt(server: ServerProc, tiny_engine: TransformersEngine) -> None:
    """OpenAI's and vLLM's completions continue the prompt text itself: ``tokenizer(prompt)``, no chat
    template and no default system message; chats keep theirs."""
    client, tok = sdk(server.base), tiny_engine.tokenizer
    raw_ids = tok(RAW)["input_ids"]
    resp = complete(client, extra_body={"ignore_eos": True})
    assert resp.object == "text_completion" and resp.choices[0].finish_reason == "length"
    assert resp.choices[0].text == tok.decode(greedy_continuation(tiny_engine.model, raw_ids, 12),
                                              skip_special_tokens=True)
    assert resp.usage is not None and resp.usage.prompt_tokens == len(raw_ids) and resp.usage.completion_tokens == 12
    as_chat = chat(client, messages=[{"role": "user", "content": RAW}], extra_body={"ignore_eos": True})
    assert as_chat.usage.prompt_tokens > len(raw_ids)  # the template and the default system message
    assert as_chat.choices[0].message.content != resp.choices[0].text
    assert resp.model_extra["alignserve"]["alignment"]["method"] == "none"
    default = client.completions.create(model=MODEL, prompt=[RAW], temperature=0, extra_body={"ignore_eos": True})
    assert default.usage is not None and default.usage.completion_tokens == 16  # OpenAI's default max_tokens
    assert default.choices[0].text.startswith(resp.choices[0].text)
    streamed = list(complete(client, stream=True, stream_options={"include_usage": True},
                             extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == resp.choices[0].text
    assert streamed[-1].usage is not None and streamed[-1].usage.completion_tokens == 12
    assert streamed[-1].usage.prompt_tokens == len(raw_ids)


def test_completions_linear_alignment_on_the_raw_prompt(server: ServerProc, tiny_engine: TransformersEngine) -> None:
    """The principle stream of a raw prompt is the principle as its leading paragraph."""
    client, tok = sdk(server.base), tiny_engine.tokenizer
    plain = complete(client).choices[0].text
    typed = complete(client, extra_body={"alignserve": {"profile": "ja"}})
    flat = complete(client, extra_body={"vllm_xargs": {"alignserve_profile": "ja"}})
    again = complete(client, extra_body={"alignserve": {"profile": "ja"}})
    assert typed.choices[0].text == flat.choices[0].text == again.choices[0].text != plain
    report = typed.model_extra["alignserve"]
    assert report["alignment"]["method"] == "linear_alignment" and report["alignment"]["principle"] == PRINCIPLE
    assert report["principle_prompt_tokens"] == len(tok(f"{PRINCIPLE}\n\n{RAW}")["input_ids"])
    assert typed.usage.prompt_tokens == len(tok(RAW)["input_ids"])
    # placement has no effect on a raw prompt (no system or user slot)
    user = complete(client, extra_body={"alignserve": {"profile": "ja", "la": {"placement": "user"}}})
    assert user.choices[0].text == typed.choices[0].text
    streamed = list(complete(client, stream=True, extra_body={"alignserve": {"profile": "ja"}}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == typed.choices[0].text


def _bench_stream(base: str, path: str, payload: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    with httpx.stream("POST", f"{base}{path}", json=payload, timeout=60) as r:
        assert r.status_code == 200, r.read()
        body = r.read().decode()
    blocks = [b.removeprefix("data: ") for b in body.split("\n\n") if b]
    assert blocks[-1] == "[DONE]"
    chunks = [json.loads(b) for b in blocks[:-1]]
    usage = [c["usage"] for c in chunks if not c["choices"] and c.get("usage")]
    return usage[0]["completion_tokens"], chunks


def test_accepts_what_vllm_bench_serve_sends(server: ServerProc) -> None:
    """The request bodies of ``vllm bench serve --backend openai`` and ``--backend openai-chat``
    (vLLM 0.26 ``benchmarks/lib/endpoint_request_func.py``), with ``--ignore-eos --temperature 0``."""
    sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "ignore_eos": True}
    completions = {"model": MODEL, "prompt": PROMPT, "repetition_penalty": 1.0, "max_tokens": 10, "logprobs": None,
                   "stream": True, "stream_options": {"include_usage": True}, **sampling}
    n, chunks = _bench_stream(server.base, "/v1/completions", completions)
    assert n == 10 and chunks[0]["choices"][0]["text"]  # the first chunk is the first token (the client's TTFT)
    chat_body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
                 "max_completion_tokens": 10, "stream": True, "stream_options": {"include_usage": True}, **sampling}
    n, chunks = _bench_stream(server.base, "/v1/chat/completions", chat_body)
    assert n == 10 and chunks[0]["choices"][0]["delta"]["content"]


def test_routes_have_their_own_metrics_label(server: ServerProc) -> None:
    chat(sdk(server.base), max_tokens=2)
    text = httpx.get(f"{server.base}/metrics").text
    assert 'alignserve_requests_total{profile="none",route="/v1/chat/completions",status="200"}' in text
    assert 'alignserve_requests_in_flight{route="/v1/chat/completions"}' in text


# ---- alignment through extra_body ----------------------------------------------------------------


def test_alignment_extras_change_output_exactly_as_generate(server: ServerProc) -> None:
    client = sdk(server.base)
    plain = native(server)["text"]
    stored = native(server, profile="ja")
    assert stored["text"] != plain  # the profile changes the output at all
    typed = chat(client, extra_body={"alignserve": {"profile": "ja"}})
    flat = chat(client, extra_body={"vllm_xargs": {"alignserve_profile": "ja@1"}})
    assert typed.choices[0].message.content == flat.choices[0].message.content == stored["text"]
    assert typed.model_extra["alignserve"]["alignment"] == stored["alignment"]
    assert flat.model_extra["alignserve"]["alignment"]["profile"] == "ja@1"
    assert chat(client).choices[0].message.content == plain

    inline = {"principle": PRINCIPLE, "la": {"strength": 0.5}}
    weaker = native(server, profile=inline)
    assert weaker["text"] != stored["text"]
    over_typed = chat(client, extra_body={"alignserve": {"profile": "ja", "la": {"strength": 0.5}}})
    over_flat = chat(client, extra_body={"vllm_xargs": {"alignserve_profile": "ja", "alignserve_la_strength": "0.5"}})
    inline_flat = chat(client, extra_body={"vllm_xargs": {"alignserve_profile": json.dumps(inline)}})
    inline_typed = chat(client, extra_body={"alignserve": {"profile": inline}})
    assert {over_typed.choices[0].message.content, over_flat.choices[0].message.content,
            inline_flat.choices[0].message.content, inline_typed.choices[0].message.content} == {weaker["text"]}
    assert over_typed.model_extra["alignserve"]["alignment"]["profile"] == "ja@1"

    # the "done when" of issue 19: a streamed chat with a stored profile from the SDK
    streamed = chat(client, stream=True, extra_body={"alignserve": {"profile": "ja"}})
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == stored["text"]
    assert chunks[-1].model_extra["alignserve"]["alignment"]["principle"] == PRINCIPLE


# ---- errors in OpenAI's shape ----------------------------------------------------------------------


def _raises(exc: type[openai.APIStatusError], fn: Any, **kw: Any) -> openai.APIStatusError:
    with pytest.raises(exc) as info:
        fn(**kw)
    err = info.value
    assert set(err.body) == {"message", "type", "param", "code"}, err.body  # type: ignore[arg-type]
    return err


def test_errors_in_openai_shape(server: ServerProc) -> None:
    client = sdk(server.base)
    create = client.chat.completions.create
    msgs = [{"role": "user", "content": PROMPT}]
    err = _raises(openai.NotFoundError, create, model="gpt-4o", messages=msgs)
    assert err.code == "model_not_found" and err.param == "model"
    err = _raises(openai.NotFoundError, create, model=MODEL, messages=msgs,
                  extra_body={"alignserve": {"profile": "nope"}})
    assert err.code == "profile_not_found"
    err = _raises(openai.BadRequestError, create, model=MODEL, messages=msgs, n=2)
    assert err.param == "n" and "n > 1 is not supported" in err.message
    err = _raises(openai.BadRequestError, create, model=MODEL, messages=msgs, temperature=3)  # 422 -> 400
    assert err.param == "temperature" and err.type == "invalid_request_error"
    err = _raises(openai.BadRequestError, create, model=MODEL, messages=msgs, extra_body={"best_guess": 1})
    assert "Unrecognized request argument supplied: best_guess" in err.message
    err = _raises(openai.BadRequestError, create, model=MODEL, messages=[*msgs, {"role": "assistant", "content": "x"}])
    assert err.param == "messages"
    err = _raises(openai.BadRequestError, create, model=MODEL, messages=msgs, max_tokens=10**6)
    assert err.param == "max_tokens"
    err = _raises(openai.BadRequestError, create, model=MODEL, messages=[{"role": "user", "content": "hello " * 1500}])
    assert err.code == "context_length_exceeded"
    err = _raises(openai.BadRequestError, create, model=MODEL, messages=msgs,
                  extra_body={"vllm_xargs": {"alignserve_profile": "ja", "alignserve_la_strength": "strong"}})
    assert err.param == "vllm_xargs.alignserve_la_strength"
    err = _raises(openai.BadRequestError, client.completions.create, model=MODEL, prompt=[PROMPT, PROMPT])
    assert err.param == "prompt"
    err = _raises(openai.BadRequestError, client.completions.create, model=MODEL, prompt="hello " * 1500)
    assert err.code == "context_length_exceeded" and err.param == "prompt"
    # streaming requests fail before the stream starts, with the same errors
    _raises(openai.NotFoundError, create, model="gpt-4o", messages=msgs, stream=True)
    # the rest of alignserve keeps its own shape
    native_err = httpx.post(f"{server.base}/generate", json={"prompt": ""}).json()["error"]
    assert native_err["type"] == "invalid_request" and "param" not in native_err


# ---- back-pressure, deadlines, cancellation, keys (in-process uvicorn) ----------------------------


@pytest.fixture
def held(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[str, Any, threading.Event]]:
    """A server whose engine waits for ``gate`` before each batch: one request decodes, one waits."""
    app = create_app(make_settings(tmp_path, tiny_model_dir, max_queue=1, max_batch_size=1,
                                   request_timeout_s=3.0, served_model_name=MODEL))
    with serve_in_thread(app) as base:
        rt = app.state.runtime
        gate = threading.Event()
        real = rt.engine.generate

        def gated(reqs: Any) -> Any:
            gate.wait(20)
            return real(reqs)

        rt.engine.generate = gated
        try:
            yield base, rt, gate
        finally:
            gate.set()


def test_overload_is_429_with_retry_after_and_deadline_504(held: tuple[str, Any, threading.Event]) -> None:
    base, rt, gate = held
    client = sdk(base)
    errors: list[Exception] = []

    def call() -> None:
        try:
            chat(client, max_tokens=2)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.4)  # one in the engine, one in the queue
    err = _raises(openai.RateLimitError, chat, client=client, max_tokens=2)
    assert err.code == "overloaded" and err.response.headers["retry-after"] == "2"
    for t in threads:
        t.join(15)
    # both held past the 3 s deadline
    assert len(errors) == 2 and all(isinstance(e, openai.InternalServerError) and e.status_code == 504
                                    and e.code == "timeout" for e in errors), errors
    gate.set()


def test_disconnect_cancels_v1_stream(held: tuple[str, Any, threading.Event]) -> None:
    base, rt, gate = held
    gate.set()
    forward = rt.engine._forward

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.03)
        return forward(*args, **kwargs)

    rt.engine._forward = slow
    before = metric(base, 'alignserve_generations_total{finish_reason="cancelled"}')
    stream = sdk(base).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=60, temperature=0, stream=True,
                                               extra_body={"ignore_eos": True})
    started = time.time()
    next(iter(stream))
    stream.close()  # hang up after the first token
    deadline = time.time() + 5
    while time.time() < deadline and metric(base, 'alignserve_generations_total{finish_reason="cancelled"}') <= before:
        time.sleep(0.05)
    assert metric(base, 'alignserve_generations_total{finish_reason="cancelled"}') == before + 1
    assert time.time() - started < 3  # 60 tokens at 30 ms a step would not have finished yet


def test_disconnect_cancels_v1_non_streaming(held: tuple[str, Any, threading.Event]) -> None:
    base, rt, gate = held
    gate.set()
    forward = rt.engine._forward

    def slow(*args: Any, **kwargs: Any) -> Any:  # 60 tokens take > 3.6 s: past the 3 s deadline
        time.sleep(0.06)
        return forward(*args, **kwargs)

    rt.engine._forward = slow
    cancelled = 'alignserve_generations_total{finish_reason="cancelled"}'
    before = metric(base, cancelled)
    impatient = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=0.5)
    started = time.time()
    with pytest.raises(openai.APITimeoutError):
        chat(impatient, max_tokens=60, extra_body={"ignore_eos": True})
    while time.time() - started < 2.0 and metric(base, cancelled) <= before:
        time.sleep(0.05)
    assert metric(base, cancelled) == before + 1  # the server noticed the hang-up, not its deadline
    assert time.time() - started < 2.5


def test_api_keys_and_scopes(tmp_path: Path, tiny_model_dir: Path) -> None:
    app = create_app(make_settings(tmp_path, tiny_model_dir, require_api_key=True, served_model_name=MODEL))
    with serve_in_thread(app) as base:
        rt = app.state.runtime
        full, _ = rt.keys.create("app", ["generate", "read"])
        reader, _ = rt.keys.create("dash", ["read"])
        err = _raises(openai.AuthenticationError, chat, client=sdk(base, "not-a-key"))
        assert err.code == "invalid_api_key"
        assert [m.id for m in sdk(base, reader).models.list().data] == [MODEL]
        err = _raises(openai.PermissionDeniedError, chat, client=sdk(base, reader))
        assert err.type == "permission_error"
        assert chat(sdk(base, full), max_tokens=2).usage.completion_tokens == 2


def test_unavailable_model_is_503_in_openai_shape(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, tmp_path / "does-not-exist", served_model_name=MODEL))
    with TestClient(app) as c:
        app.state.runtime.wait_loaded(30)
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "server_error" and r.json()["error"]["code"] == "model_unavailable"
        assert "alignserve" in json.dumps(c.get("/openapi.json").json()["components"]["schemas"]["AlignserveOptions"])
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
        assert "vllm_xargs" in schemas["ChatCompletionRequest"]["properties"]
        assert "alignserve" in schemas["ChatCompletionRequest"]["properties"]
