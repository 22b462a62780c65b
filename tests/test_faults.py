"""Hostile input through the real app: out-of-range profile refs, oversized heads and chunked bodies,
HEAD probes, 405s. Each answer is a 4xx/2xx in the error shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.store.profiles import MAX_VERSION, parse_ref


def assert_error(r, status: int, type_: str | None = None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    if type_ is not None:
        assert err["type"] == type_, err
    return err  # type: ignore[no-any-return]


def test_parse_ref_bounds_the_version() -> None:
    assert parse_ref(f"a@{MAX_VERSION}") == ("a", MAX_VERSION)
    for bad in (f"a@{MAX_VERSION + 1}", "a@99999999999999999999", "a@" + "9" * 5000, "a@\u0661", "a@\u00b2"):
        with pytest.raises(ValueError):
            parse_ref(bad)


@pytest.mark.parametrize("ref", ["name@99999999999999999999", f"name@{MAX_VERSION + 1}", "name@" + "9" * 300])
def test_out_of_range_profile_versions_are_422(client: TestClient, ref: str) -> None:
    assert_error(client.get(f"/profiles/{ref}"), 422)
    assert_error(client.post("/generate", json={"prompt": "hi", "max_tokens": 1, "profile": ref}), 422)
    assert_error(client.post("/score", json={"prompt": "q", "responses": ["a"], "profile": ref}), 422)
    assert_error(client.get(f"/profiles/{ref}/versions"), 422)


def test_largest_version_is_a_plain_404(client: TestClient) -> None:
    assert_error(client.get(f"/profiles/name@{MAX_VERSION}"), 404, "profile_not_found")
    r = client.post("/generate", json={"prompt": "hi", "max_tokens": 1, "profile": f"name@{MAX_VERSION}"})
    assert_error(r, 404, "profile_not_found")


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    sent = 0
    yield b'{"prompt": "'
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    limit = client.app.state.runtime.settings.max_body_bytes  # type: ignore[attr-defined]
    r = client.post("/generate", content=_chunks(limit + 5000), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers  # really chunked
    assert_error(r, 413, "body_too_large")
    assert r.headers["connection"] == "close"
    small = client.post("/generate", content=iter([b'{"prompt": "hi", ', b'"max_tokens": 1}']),
                        headers={"content-type": "application/json"})
    assert small.status_code == 200, small.text  # chunked bodies under the limit are read as usual


def test_oversized_headers_are_431(client: TestClient) -> None:
    assert_error(client.get("/healthz", headers={"x-big": "a" * 100_000}), 431, "headers_too_large")
    assert client.get("/healthz", headers={"x-ok": "a" * 4000}).status_code == 200


def test_head_on_probes_and_metrics(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path
    assert client.head("/metrics").headers["content-type"].startswith("text/plain")


def test_405_names_the_allowed_methods(client: TestClient) -> None:
    err = assert_error(client.put("/healthz"), 405)
    assert "method" in err["message"].lower()
    assert set(client.put("/healthz").headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert client.delete("/generate").headers["allow"] == "POST"
    assert_error(client.get("/generate"), 405)
