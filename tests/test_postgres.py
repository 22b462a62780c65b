"""The profile store on a real PostgreSQL server started by the test (Debian's postgresql package)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.store.api_keys import ApiKeyStore
from service.store.profiles import ProfileStore

from .server_proc import ServerProc, start_server
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


def _fresh_database(pg_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return pg_url.rsplit("/", 1)[0] + f"/{name}"


def test_two_replicas_share_one_postgres(pg_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Two real server processes, started together on an empty database (both migrate it), write
    versions of the same profiles concurrently: every acknowledged write is stored once, under the
    version it was acknowledged with, and each name's versions run 1..n without a gap."""
    url = _fresh_database(pg_url, "replicas")
    servers: list[ServerProc] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        home = tmp_path / f"replica{i}"
        home.mkdir()
        try:
            servers.append(start_server(home, tiny_model_dir, extra=["--db-url", url, "--reward-model", "none"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    starters = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(120)
    try:
        assert not errors and len(servers) == 2, errors
        acked: list[tuple[str, int, str]] = []
        statuses: list[int] = []
        lock = threading.Lock()

        def writer(srv: ServerProc, w: int) -> None:
            with httpx.Client(base_url=srv.base, timeout=30) as c:
                for i in range(12):
                    name = ("shared", "other")[i % 2]
                    principle = f"{srv.base} writer {w} write {i}"
                    r = c.post("/profiles", json={"name": name, "principle": principle})
                    with lock:
                        statuses.append(r.status_code)
                        if r.status_code == 201:
                            acked.append((name, r.json()["version"], principle))

        threads = [threading.Thread(target=writer, args=(srv, w)) for srv in servers for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert statuses.count(201) == len(statuses) == 2 * 4 * 12, sorted(set(statuses))
        store = ProfileStore(url)
        for name in ("shared", "other"):
            mine = sorted((v, p) for n, v, p in acked if n == name)
            stored = [(r.version, r.spec["principle"]) for r in store.versions(name)]
            assert stored == mine  # nothing lost, nothing duplicated, versions as acknowledged
            assert [v for v, _ in stored] == list(range(1, len(stored) + 1))
        # each replica reads what the other wrote
        with httpx.Client(timeout=10) as c:
            latest = {s.base: c.get(f"{s.base}/profiles/shared").json()["version"] for s in servers}
        assert set(latest.values()) == {len([a for a in acked if a[0] == "shared"])}
        store.close()
    finally:
        for srv in servers:
            srv.proc.terminate()
        for srv in servers:
            srv.proc.wait(30)
