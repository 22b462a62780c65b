"""Property-based fuzzing of the OpenAPI schema with schemathesis: no 5xx, no hangs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from service.api.app import create_app

from .conftest import make_settings
from .server_proc import serve_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_base(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(make_settings(tmp, tiny_model_dir, max_tokens_limit=16, request_timeout_s=20))
    with serve_in_thread(app) as base:
        yield base


def test_openapi_fuzz_no_server_errors(live_base: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live_base}/openapi.json")
    failures: list[str] = []
    calls = [0]

    def fuzz(op):  # type: ignore[no-untyped-def]
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case) -> None:  # type: ignore[no-untyped-def]
            calls[0] += 1
            started = time.time()
            response = case.call(base_url=live_base, timeout=30)
            assert time.time() - started < 30, f"{op.label} took too long"
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except Exception as exc:  # collect, so one run reports every failing operation
                failures.append(f"{op.label}: {exc}")
                raise

        return run

    for op_result in schema.get_all_operations():
        with contextlib.suppress(AssertionError, Exception):
            fuzz(op_result.ok())()
    assert calls[0] > 100
    assert not failures, "\n".join(failures[:10])
