from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.engines.transformers.engine import TransformersEngine

from .tiny_model import build_tiny_model

REAL_MODEL_HOME = Path(os.environ.get("ALIGNSERVE_HOME", str(Path.home() / ".cache" / "alignserve")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=256,
                              default_system="You are a helpful assistant.")


def make_settings(tmp_path: Path, model_dir: Path, **kw: object) -> Settings:
    base: dict[str, object] = dict(model=str(model_dir), home=tmp_path, db_url=f"sqlite:///{tmp_path / 'p.db'}",
                                   device="cpu", dtype="float32", max_model_len=256, max_tokens_limit=64,
                                   log_format="text")
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def open_client(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings, drain_s=5.0))
    client.__enter__()
    assert client.app.state.runtime.wait_loaded(60), client.app.state.runtime.load_error  # type: ignore[attr-defined]
    return client


@pytest.fixture
def client(tmp_path: Path, tiny_model_dir: Path) -> Iterator[TestClient]:
    c = open_client(make_settings(tmp_path, tiny_model_dir))
    try:
        yield c
    finally:
        c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    from service.models.provision import pull

    return pull("qwen2.5-coder-0.5b-instruct", REAL_MODEL_HOME, progress=lambda m: print(m, flush=True))
