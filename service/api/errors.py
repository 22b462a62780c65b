"""One JSON error shape for every failure: ``{"error": {"type", "message", "detail"?}}``.

Domain errors (``service.domain.errors``) become HTTP here, once: ``STATUS`` is the whole mapping.
``ApiError`` is for what only HTTP knows about (authentication, scopes, rate limits)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..domain.errors import (
    ClientGone,
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    Overloaded,
    Timeout,
    TooLarge,
    Unavailable,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers


STATUS: dict[type[DomainError], int] = {
    InvalidInput: 422, NotFound: 404, Conflict: 409, TooLarge: 413, Overloaded: 429, Unavailable: 503,
    Timeout: 504, ClientGone: 499,
}


def status_of(exc: DomainError) -> int:
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)


def retry_headers(exc: DomainError) -> dict[str, str] | None:
    if exc.retry_after is None:
        return None
    return {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}


def error_json(status: int, type_: str, message: str, detail: list | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, object] = {"type": type_, "message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.status, exc.type, exc.message, headers=exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(_req: Request, exc: DomainError) -> JSONResponse:
        return error_json(status_of(exc), exc.code, exc.message, headers=retry_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return error_json(422, "invalid_request", f"{where}: {first['msg']}" if where else str(first["msg"]),
                          detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_json(exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": req.url.path})
        return error_json(500, "internal_error", "internal server error")
