"""API keys: random bearer tokens, stored only as SHA-256 digests, each with a set of scopes.

Tokens are 32 random bytes (``as_<key id>_<secret>``), so a plain SHA-256 digest is a sound
at-rest form (no dictionary to attack). Verification compares digests with
``hmac.compare_digest`` against every active key, so timing does not reveal which key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Boolean, Column, Float, MetaData, String, Table, insert, select, update
from sqlalchemy.engine import Engine as SqlEngine

from .profiles import create_tables

SCOPES = ("read", "score", "generate", "admin")

key_metadata = MetaData()
api_keys = Table(
    "api_keys",
    key_metadata,
    Column("key_id", String(16), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("scopes", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: frozenset[str]
    created_at: float
    revoked: bool


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, engine: SqlEngine) -> None:
        self.engine = engine
        create_tables(engine, key_metadata)

    def create(self, name: str, scopes: list[str]) -> tuple[str, ApiKey]:
        """Make a key; the token is returned once and never stored."""
        bad = set(scopes) - set(SCOPES)
        if bad or not scopes:
            raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}")
        key_id = secrets.token_hex(4)
        token = f"as_{key_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(key_id=key_id, name=name, digest=digest(token),
                                                 scopes=",".join(sorted(set(scopes))), created_at=now,
                                                 revoked=False))
        return token, ApiKey(key_id, name, frozenset(scopes), now, False)

    def all(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).fetchall()
        return [ApiKey(r.key_id, r.name, frozenset(r.scopes.split(",")), r.created_at, bool(r.revoked))
                for r in rows]

    def revoke(self, key_id: str) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(revoked=True)).rowcount
        return bool(n)

    def active_digests(self) -> list[tuple[str, ApiKey]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).where(api_keys.c.revoked.is_(False))).fetchall()
        return [(r.digest, ApiKey(r.key_id, r.name, frozenset(r.scopes.split(",")), r.created_at, False))
                for r in rows]


class KeyVerifier:
    """Caches active key digests (refreshed every ``ttl_s``) and checks tokens in constant time."""

    def __init__(self, store: ApiKeyStore, ttl_s: float = 5.0) -> None:
        self.store, self.ttl_s = store, ttl_s
        self._cache: list[tuple[str, ApiKey]] = []
        self._loaded = 0.0

    def verify(self, token: str) -> ApiKey | None:
        if time.monotonic() - self._loaded > self.ttl_s:
            self._cache = self.store.active_digests()
            self._loaded = time.monotonic()
        want = digest(token)
        found: ApiKey | None = None
        for d, key in self._cache:
            if hmac.compare_digest(d, want):
                found = key
        return found


class RateLimiter:
    """Token bucket per key: ``per_minute`` requests, bursts up to the same number."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key_id: str) -> tuple[bool, float]:
        """(allowed, seconds until the next token)."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return True, 0.0
        self._buckets[key_id] = (tokens, now)
        return False, (1.0 - tokens) / self.rate
