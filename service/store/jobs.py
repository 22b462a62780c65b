"""Background jobs (profile compilation) in the profile database, so none is lost on restart.

A job is queued by the API, claimed by the job runner (``queued → running``), reports progress
while it runs and ends ``succeeded`` (with the profile version it wrote), ``failed`` (with the
reason) or ``cancelled``. Jobs found ``running`` at start-up were interrupted by a stop or a crash
and are queued again.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, Text, func, insert, select, update
from sqlalchemy.engine import Engine as SqlEngine

from .profiles import create_tables

ACTIVE = ("queued", "running")

job_metadata = MetaData()
jobs = Table(
    "jobs",
    job_metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("profile_name", String(64), nullable=False, index=True),
    Column("spec", Text, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("phase", String(32), nullable=False, default=""),
    Column("done", Integer, nullable=False, default=0),
    Column("total", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("profile_version", Integer, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


class JobQueueFull(RuntimeError):
    pass


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    profile_name: str
    spec: dict[str, Any]
    status: str
    phase: str
    done: int
    total: int
    error: str | None
    profile_version: int | None
    cancel_requested: bool
    attempts: int
    created_at: float
    updated_at: float

    @property
    def profile_ref(self) -> str | None:
        return f"{self.profile_name}@{self.profile_version}" if self.profile_version else None


class JobStore:
    def __init__(self, engine: SqlEngine, max_active: int = 16) -> None:
        self.engine = engine
        self.max_active = max_active
        create_tables(engine, job_metadata)

    @staticmethod
    def _record(row: Any) -> JobRecord:
        return JobRecord(row.id, row.kind, row.profile_name, json.loads(row.spec), row.status, row.phase,
                         row.done, row.total, row.error, row.profile_version, bool(row.cancel_requested),
                         row.attempts, row.created_at, row.updated_at)

    def create(self, kind: str, profile_name: str, spec: dict[str, Any]) -> JobRecord:
        now = time.time()
        job_id = f"job-{secrets.token_hex(8)}"
        with self.engine.begin() as conn:
            active = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.status.in_(ACTIVE))).scalar()
            if (active or 0) >= self.max_active:
                raise JobQueueFull(f"{active} jobs are already queued or running")
            conn.execute(insert(jobs).values(
                id=job_id, kind=kind, profile_name=profile_name, spec=json.dumps(spec, sort_keys=True),
                status="queued", phase="queued", done=0, total=0, cancel_requested=False, attempts=0,
                created_at=now, updated_at=now))
        rec = self.get(job_id)
        assert rec is not None
        return rec

    def get(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return self._record(row) if row else None

    def recent(self, limit: int = 50) -> list[JobRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).order_by(jobs.c.created_at.desc()).limit(limit))
            return [self._record(r) for r in rows]

    def claim_next(self) -> JobRecord | None:
        """Atomically move the oldest queued job to ``running``; None when there is none."""
        for _ in range(5):
            with self.engine.begin() as conn:
                row = conn.execute(select(jobs.c.id).where(jobs.c.status == "queued")
                                   .order_by(jobs.c.created_at).limit(1)).first()
                if row is None:
                    return None
                claimed = conn.execute(update(jobs).where((jobs.c.id == row.id) & (jobs.c.status == "queued"))
                                       .values(status="running", phase="starting", attempts=jobs.c.attempts + 1,
                                               updated_at=time.time())).rowcount
            if claimed:
                return self.get(row.id)
        return None

    def progress(self, job_id: str, phase: str, done: int, total: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id)
                         .values(phase=phase, done=done, total=total, updated_at=time.time()))

    def finish(self, job_id: str, status: str, error: str | None = None,
               profile_version: int | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                status=status, phase=status, error=error, profile_version=profile_version, updated_at=time.time()))

    def requeue(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id)
                         .values(status="queued", phase="queued", updated_at=time.time()))

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Queued jobs are cancelled at once; running ones stop at their next step."""
        with self.engine.begin() as conn:
            now = time.time()
            conn.execute(update(jobs).where((jobs.c.id == job_id) & (jobs.c.status == "queued"))
                         .values(status="cancelled", phase="cancelled", updated_at=now))
            conn.execute(update(jobs).where((jobs.c.id == job_id) & (jobs.c.status == "running"))
                         .values(cancel_requested=True, updated_at=now))
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar())

    def requeue_interrupted(self) -> int:
        """At start-up: jobs left ``running`` by a stop or crash go back to the queue."""
        with self.engine.begin() as conn:
            return int(conn.execute(update(jobs).where(jobs.c.status == "running")
                                    .values(status="queued", phase="queued", updated_at=time.time())).rowcount or 0)
