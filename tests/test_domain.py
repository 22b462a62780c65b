"""The application layer: profile resolution and its cache, error mapping, readiness, engine refusals."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.errors import STATUS, status_of
from service.config import Settings, served_model_name
from service.domain import errors as domain_errors
from service.domain.errors import Conflict, DomainError, InvalidInput, NotFound
from service.domain.profile_spec import ProfileSpec
from service.domain.profiles import ProfileResolver
from service.domain.readiness import LOADING, Phase, failed
from service.engines.base import RequestRejected
from service.reward.activation_rm import CompiledARM
from service.store.profiles import ProfileStore

from .conftest import make_settings, open_client

LAYERS, HEADS, DIM = 2, 4, 16  # the tiny model's attention layout


def _compiled(layers: int = LAYERS) -> bytes:
    arm = CompiledARM(heads=[(0, 1), (1, 2)], means=torch.randn(2, DIM), directions=torch.randn(2, DIM),
                      sigmas=torch.ones(2),
                      info={"num_layers": layers, "num_heads": HEADS, "head_dim": DIM, "model": "tiny"})
    return arm.to_bytes()


class _Shape:
    backend, model_name = "stub", "stub"
    num_layers, num_heads, head_dim = LAYERS, HEADS, DIM


def test_compiled_profiles_are_decoded_once_per_version(tmp_path: Path) -> None:
    store = ProfileStore(f"sqlite:///{tmp_path / 'p.db'}")
    resolver = ProfileResolver(store)
    store.create("arm", {"principle": "Be brief."}, tensors=_compiled())
    first = resolver.resolve("arm", _Shape())  # type: ignore[arg-type]
    second = resolver.resolve("arm@1", _Shape())  # type: ignore[arg-type]
    assert first.compiled is not None and second.compiled is first.compiled
    assert (resolver.misses, resolver.hits) == (1, 1)
    assert first.label == "arm@1" and first.name == "arm" and first.spec == ProfileSpec(principle="Be brief.")
    # deleted and created again: version 1 again, but new tensors; the cache must not serve the old ones
    store.delete("arm")
    time.sleep(0.01)
    store.create("arm", {"principle": "Be brief."}, tensors=_compiled())
    third = resolver.resolve("arm", _Shape())  # type: ignore[arg-type]
    assert third.compiled is not first.compiled and resolver.misses == 2
    assert not torch.equal(third.compiled.means, first.compiled.means)  # type: ignore[union-attr]


def test_resolution_errors_are_typed(tmp_path: Path) -> None:
    store = ProfileStore(f"sqlite:///{tmp_path / 'p.db'}")
    resolver = ProfileResolver(store)
    store.create("other-model", {}, tensors=_compiled(layers=7))
    with pytest.raises(NotFound):
        resolver.resolve("missing", None)
    with pytest.raises(InvalidInput):
        resolver.resolve("Bad Name!", None)
    with pytest.raises(Conflict, match="layers"):
        resolver.resolve("other-model", _Shape())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="inline"):
        resolver.resolve(ProfileSpec.model_validate({"activation_rm": {"examples": [
            {"prompt": "p", "response": "r", "label": lab} for lab in ("good", "bad", "good", "bad")]}}), None)
    assert resolver.resolve(None, None).spec is None


def test_every_domain_error_has_one_http_status() -> None:
    kinds = [c for c in vars(domain_errors).values()
             if isinstance(c, type) and issubclass(c, DomainError) and c is not DomainError]
    assert kinds and all(k in STATUS for k in kinds)
    assert status_of(domain_errors.TooLarge("x", "y")) == 413
    assert status_of(domain_errors.Overloaded("x", "y", retry_after=2)) == 429


def test_readiness_and_served_name(tmp_path: Path) -> None:
    assert LOADING.phase is Phase.LOADING and not LOADING.ready
    f = failed(RuntimeError("boom"))
    assert f.phase is Phase.FAILED and f.describe() == "failed: RuntimeError: boom"
    assert served_model_name(Settings(model="embedded:qwen2.5-coder-0.5b-instruct")) == "qwen2.5-coder-0.5b-instruct"
    folder = tmp_path / "models" / "tiny-llama"
    folder.mkdir(parents=True)
    assert served_model_name(Settings(model=str(folder))) == "tiny-llama"
    assert served_model_name(Settings(model="org/name")) == "org/name"
    assert served_model_name(Settings(model=str(folder), served_model_name="mine")) == "mine"


def test_responses_name_the_model_not_its_path(client: TestClient, tiny_model_dir: Path) -> None:
    r = client.post("/generate", json={"prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200
    assert r.json()["model"] == tiny_model_dir.name and "/" not in r.json()["model"]
    assert client.get("/readyz").json()["model"] == tiny_model_dir.name


def test_profile_listing_reuses_decoded_tensors(client: TestClient) -> None:
    rt: Any = client.app.state.runtime  # type: ignore[attr-defined]
    rt.store.create("arm", {"principle": "Be brief."}, tensors=_compiled())
    for _ in range(3):
        assert client.get("/profiles").json()[0]["compiled"]["heads"] == [[0, 1], [1, 2]]
    assert client.get("/profiles/arm").status_code == 200
    assert rt.profiles.misses == 1 and rt.profiles.hits == 3


def test_engine_refusals_are_4xx_and_in_flight_is_tracked(client: TestClient) -> None:
    rt: Any = client.app.state.runtime  # type: ignore[attr-defined]
    seen: list[float] = []
    real = rt.engine.generate

    def refuse(requests: Any) -> Any:
        seen.append(rt.metrics.in_flight.labels("/generate")._value.get())
        raise RequestRejected("steering_unsupported", "this model has no attention out-projection")

    rt.engine.generate = refuse
    try:
        r = client.post("/generate", json={"prompt": "hi", "max_tokens": 2})
    finally:
        rt.engine.generate = real
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {"type": "steering_unsupported", "message": "this model has no attention "
                                 "out-projection"}
    assert seen == [1.0]  # counted while the engine had it
    assert rt.metrics.in_flight.labels("/generate")._value.get() == 0.0


def test_stored_profile_label_only_after_resolution(tmp_path: Path, tiny_model_dir: Path) -> None:
    c = open_client(make_settings(tmp_path, tiny_model_dir))
    try:
        for i in range(3):  # unknown names must not create metric series
            assert c.post("/generate", json={"prompt": "hi", "profile": f"nope{i}"}).status_code == 404
        text = c.get("/metrics").text
        assert 'profile="nope0"' not in text and 'route="/generate",status="404"' in text
    finally:
        c.__exit__(None, None, None)


def test_loop_bridge_coalesces_wakeups_and_keeps_order() -> None:
    import asyncio
    import threading

    from service.domain.bridge import LoopBridge

    async def run() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        bridge = LoopBridge(loop)
        got: list[int] = []
        t = threading.Thread(target=lambda: [bridge.post(got.append, i) for i in range(500)])
        t.start()
        t.join()  # the loop has not run yet: every post after the first joins the scheduled drain
        await asyncio.sleep(0)
        bridge.post(got.append, 500)  # from the loop itself, after the drain: a new wake-up
        await asyncio.sleep(0)
        return got, bridge.wakeups

    got, wakeups = asyncio.run(run())
    assert got == list(range(501))
    assert wakeups == 2
