"""FastAPI dependencies: the lifespan-built runtime, handed to handlers."""

from __future__ import annotations

from fastapi import Request

from ..runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]
