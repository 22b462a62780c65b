"""API keys: hashed at rest, scoped, 401 vs 403, revocation, per-key rate limits; CORS off."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main as cli_main
from service.store.api_keys import ApiKeyStore, RateLimiter
from service.store.profiles import ProfileStore

from .conftest import make_settings, open_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_scopes_401_403_and_revocation(tmp_path: Path, tiny_model_dir: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    settings = make_settings(tmp_path, tiny_model_dir, require_api_key=True)
    keys = ApiKeyStore(ProfileStore(settings.resolved_db_url()).engine)
    gen_token, _ = keys.create("app", ["generate", "read"])
    score_token, score_key = keys.create("scorer", ["score"])
    admin_token, _ = keys.create("ops", ["admin"])
    c = open_client(settings)
    try:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        r = c.post("/generate", json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/generate", json={"prompt": "hi"}, headers=bearer("as_nope_nope")).status_code == 401
        assert c.post("/generate", json={"prompt": "hi"}, headers={"Authorization": "Basic abc"}).status_code == 401
        r = c.post("/generate", json={"prompt": "hi", "max_tokens": 2}, headers=bearer(score_token))
        assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
        ok = c.post("/generate", json={"prompt": "hi", "max_tokens": 2}, headers=bearer(gen_token))
        assert ok.status_code == 200
        scored = c.post("/score", json={"prompt": "q", "responses": ["a"]}, headers=bearer(score_token))
        assert scored.status_code == 200
        # profile writes need admin; reads need read
        assert c.post("/profiles", json={"name": "p", "principle": "x"}, headers=bearer(gen_token)).status_code == 403
        assert c.post("/profiles", json={"name": "p", "principle": "x"}, headers=bearer(admin_token)).status_code == 201
        assert c.get("/profiles/p", headers=bearer(gen_token)).status_code == 200
        assert c.get("/profiles/p", headers=bearer(score_token)).status_code == 403
        # auth is checked before the body: no information leaks to unauthenticated callers
        assert c.post("/generate", json={"bad": 1}).status_code == 401
        keys.revoke(score_key.key_id)
        c.app.state.runtime.verifier.ttl_s = 0  # type: ignore[attr-defined]
        gone = c.post("/score", json={"prompt": "q", "responses": ["a"]}, headers=bearer(score_token))
        assert gone.status_code == 401
    finally:
        c.__exit__(None, None, None)
    for token in (gen_token, score_token, admin_token):  # secrets never reach the logs
        assert token not in caplog.text and token.split("_", 2)[2] not in caplog.text
    assert "alignserve.access" in caplog.text  # the access log did run
    raw = (tmp_path / "p.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("p.db-*") if p.is_file())
    for token in (gen_token, score_token, admin_token):
        assert token.encode() not in raw  # only digests at rest
        assert token.split("_", 2)[2].encode() not in raw


def test_rate_limit_per_key(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = make_settings(tmp_path, tiny_model_dir, require_api_key=True, rate_limit_per_minute=2)
    keys = ApiKeyStore(ProfileStore(settings.resolved_db_url()).engine)
    a, _ = keys.create("a", ["read"])
    b, _ = keys.create("b", ["read"])
    c = open_client(settings)
    try:
        codes = [c.get("/profiles", headers=bearer(a)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.get("/profiles", headers=bearer(a))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert c.get("/profiles", headers=bearer(b)).status_code == 200  # buckets are per key
    finally:
        c.__exit__(None, None, None)


def test_token_bucket_refills() -> None:
    lim = RateLimiter(per_minute=60)
    assert all(lim.allow("k")[0] for _ in range(60))
    ok, wait = lim.allow("k")
    assert not ok and 0 < wait <= 1.0


def test_cors_is_off_by_default(client) -> None:  # type: ignore[no-untyped-def]
    r = client.options("/generate", headers={"Origin": "https://evil.example",
                                              "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/generate", json={"prompt": "hi", "max_tokens": 1}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_keys_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    assert cli_main(["keys", "create", "ci", "--scopes", "score,read", "--db-url", db]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("as_")
    assert cli_main(["keys", "list", "--db-url", db]) == 0
    listing = capsys.readouterr().out
    assert "ci" in listing and "read,score" in listing and token not in listing
    key_id = token.split("_")[1]
    assert cli_main(["keys", "revoke", key_id, "--db-url", db]) == 0
    assert cli_main(["keys", "create", "x", "--scopes", "root", "--db-url", db]) == 2
