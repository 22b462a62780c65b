"""The profile store on a real PostgreSQL server started by the test (Debian's postgresql package)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.store.api_keys import ApiKeyStore
from service.store.profiles import ProfileStore

from .test_store import assert_concurrent_writers_get_distinct_versions

pytestmark = pytest.mark.slow

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def _as_postgres(cmd: list[str]) -> list[str]:
    return cmd if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    if PG_BIN is None or not (PG_BIN / "postgres").exists():
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    # pytest's temp folders are private to root; the server runs as 'postgres' and needs its own
    root = Path(tempfile.mkdtemp(prefix="alignserve-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                                 f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_profiles_on_postgres(pg_url: str) -> None:
    store = ProfileStore(pg_url)
    assert store.engine.dialect.name == "postgresql"
    a = store.create("pg", {"principle": "one"}, tensors=b"\x00\x01binary")
    b = store.create("pg", {"principle": "two"})
    assert (a.version, b.version) == (1, 2)
    store.close()
    reopened = ProfileStore(pg_url)  # migrations are idempotent; data persists
    rec = reopened.get("pg@1")
    assert rec is not None and rec.spec == {"principle": "one"} and rec.tensors == b"\x00\x01binary"
    assert reopened.get("pg").version == 2  # type: ignore[union-attr]
    assert [r.ref for r in reopened.list_latest()] == ["pg@2"]
    keys = ApiKeyStore(reopened.engine)
    token, key = keys.create("k", ["read"])
    assert keys.all()[0].key_id == key.key_id
    assert reopened.delete("pg") == 2 and reopened.get("pg") is None


def test_concurrent_writers_get_distinct_versions(pg_url: str) -> None:
    assert_concurrent_writers_get_distinct_versions(ProfileStore(pg_url))
