"""Named, versioned preference profiles in a SQL database (SQLite by default, PostgreSQL by URL).

Every write of a name creates a new immutable version; readers ask for ``name`` (latest) or
``name@version``. Compiled tensors (activation-RM heads, steering vectors) are stored as
safetensors bytes in the same row, so a profile and its tensors commit atomically and nothing
user-supplied is ever unpickled or used as a file path.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import IntegrityError

SCHEMA_VERSION = 1
NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
NAME_RE = re.compile(f"^{NAME_PATTERN}$")
# The version column is a 32-bit INTEGER on PostgreSQL (and SQLite refuses ints past 64 bits):
# a larger version can never exist, and passing it to the driver raises instead of matching nothing.
MAX_VERSION = 2**31 - 1
# ``name`` or ``name@version`` as the API accepts it (the bound the schema checks before the parser).
REF_PATTERN = f"^{NAME_PATTERN}(@[0-9]{{1,10}})?$"
MAX_REF_CHARS = 64 + 1 + 10
_MIGRATION_LOCK = 0x616C_6967_6E73  # PostgreSQL advisory-lock key of schema migrations ("aligns")


def create_tables(engine: SqlEngine, meta: MetaData) -> None:
    """``meta.create_all`` safe against replicas starting together: on PostgreSQL the check-then-create
    runs under the migration advisory lock (else two servers race to create one table and one dies
    with a duplicate-key error). Every store creates its tables through this."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        meta.create_all(conn)

metadata = MetaData()
profiles = Table(
    "profiles",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("spec", Text, nullable=False),
    Column("tensors", LargeBinary, nullable=True),
    UniqueConstraint("name", "version", name="uq_profile_name_version"),
)
schema_migrations = Table(
    "alignserve_schema",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)


class ProfileConflict(RuntimeError):
    pass


@dataclass(frozen=True)
class ProfileRecord:
    name: str
    version: int
    created_at: float
    spec: dict[str, Any]
    tensors: bytes | None  # None also when read with ``get_meta`` (see ``has_tensors``)
    has_tensors: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name@version`` → (name, version); raises ValueError when malformed."""
    name, sep, ver = ref.partition("@")
    if not NAME_RE.match(name):
        raise ValueError("profile names are 1-64 characters of a-z, 0-9, '_', '.', '-', starting alphanumeric")
    if not sep:
        return name, None
    if not (ver.isascii() and ver.isdigit()) or len(ver) > 10 or not 1 <= int(ver) <= MAX_VERSION:
        raise ValueError(f"profile version must be an integer from 1 to {MAX_VERSION}, as in name@3")
    return name, int(ver)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


class ProfileStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: SqlEngine = create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

    def _migrate(self) -> None:
        """Create the schema or check its version. Replicas starting together on an empty PostgreSQL
        database would race to create the same tables (a duplicate-key error kills one of them), so
        there the whole migration runs under one transaction-scoped advisory lock."""
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            metadata.create_all(conn)
            current = conn.execute(select(func.max(schema_migrations.c.version))).scalar()
            if current is None:
                conn.execute(insert(schema_migrations).values(version=SCHEMA_VERSION, applied_at=time.time()))
            elif current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"profile DB schema v{current} is newer than this alignserve (v{SCHEMA_VERSION})"
                )

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _record(row: Any) -> ProfileRecord:
        return ProfileRecord(row.name, row.version, row.created_at, json.loads(row.spec), row.tensors,
                             row.tensors is not None)

    def create(self, name: str, spec: dict[str, Any], tensors: bytes | None = None) -> ProfileRecord:
        parse_ref(name)
        body = json.dumps(spec, sort_keys=True)
        for attempt in range(20):  # concurrent writers of one name race for the next version number
            try:
                with self.engine.begin() as conn:
                    if self.engine.dialect.name == "postgresql":  # serialize writers of this name
                        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": name})
                    latest = conn.execute(
                        select(func.max(profiles.c.version)).where(profiles.c.name == name)
                    ).scalar()
                    version = (latest or 0) + 1
                    now = time.time()
                    conn.execute(insert(profiles).values(
                        name=name, version=version, created_at=now, spec=body, tensors=tensors))
                return ProfileRecord(name, version, now, json.loads(body), tensors, tensors is not None)
            except IntegrityError:
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise ProfileConflict(f"could not allocate a version for {name!r}: too many concurrent writers")

    def get(self, ref: str) -> ProfileRecord | None:
        name, version = parse_ref(ref)
        q = select(profiles).where(profiles.c.name == name)
        q = q.where(profiles.c.version == version) if version else q.order_by(profiles.c.version.desc())
        with self.engine.connect() as conn:
            row = conn.execute(q.limit(1)).first()
        return self._record(row) if row else None

    def get_meta(self, ref: str) -> ProfileRecord | None:
        """Like ``get`` without reading the tensors blob (``has_tensors`` says whether there is one):
        the per-request read, whose compiled tensors come from the resolver's cache."""
        name, version = parse_ref(ref)
        cols = [profiles.c.name, profiles.c.version, profiles.c.created_at, profiles.c.spec,
                profiles.c.tensors.isnot(None).label("has_tensors")]
        q = select(*cols).where(profiles.c.name == name)
        q = q.where(profiles.c.version == version) if version else q.order_by(profiles.c.version.desc())
        with self.engine.connect() as conn:
            row = conn.execute(q.limit(1)).first()
        if row is None:
            return None
        return ProfileRecord(row.name, row.version, row.created_at, json.loads(row.spec), None, bool(row.has_tensors))

    def tensors(self, name: str, version: int) -> bytes | None:
        q = select(profiles.c.tensors).where(profiles.c.name == name, profiles.c.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return row.tensors if row else None

    def versions(self, name: str) -> list[ProfileRecord]:
        parse_ref(name)
        q = select(profiles).where(profiles.c.name == name).order_by(profiles.c.version)
        with self.engine.connect() as conn:
            return [self._record(r) for r in conn.execute(q)]

    def list_latest(self) -> list[ProfileRecord]:
        latest = (
            select(profiles.c.name, func.max(profiles.c.version).label("v")).group_by(profiles.c.name).subquery()
        )
        q = (
            select(profiles)
            .join(latest, (profiles.c.name == latest.c.name) & (profiles.c.version == latest.c.v))
            .order_by(profiles.c.name)
        )
        with self.engine.connect() as conn:
            return [self._record(r) for r in conn.execute(q)]

    def delete(self, name: str) -> int:
        parse_ref(name)
        with self.engine.begin() as conn:
            return int(conn.execute(delete(profiles).where(profiles.c.name == name)).rowcount or 0)
