"""Profile store on SQLite: refs, versions under concurrency, schema version guard."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import insert

from service.store.profiles import ProfileStore, parse_ref, schema_migrations


def test_parse_ref() -> None:
    assert parse_ref("ja") == ("ja", None)
    assert parse_ref("ja.v2_x-1@12") == ("ja.v2_x-1", 12)
    for bad in ("", "UP", "../x", "a/b", "a@0", "a@x", "a@-1", "x" * 65, "_a"):
        with pytest.raises(ValueError):
            parse_ref(bad)


def assert_concurrent_writers_get_distinct_versions(store: ProfileStore, writers: int = 4, each: int = 10) -> None:
    versions: list[int] = []
    lock = threading.Lock()

    def write() -> None:
        for _ in range(each):
            v = store.create("race", {"principle": "x"}).version
            with lock:
                versions.append(v)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == list(range(1, writers * each + 1))


def test_same_name_concurrent_writers_sqlite(tmp_path: Path) -> None:
    assert_concurrent_writers_get_distinct_versions(ProfileStore(f"sqlite:///{tmp_path / 's.db'}"))


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = ProfileStore(url)
    with store.engine.begin() as conn:
        conn.execute(insert(schema_migrations).values(version=99, applied_at=0.0))
    store.close()
    with pytest.raises(RuntimeError, match="newer"):
        ProfileStore(url)
