"""One JSON error shape for every failure: ``{"error": {"type", "message", "detail"?}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..scheduling.health import EngineUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers


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

    @app.exception_handler(EngineUnavailable)
    async def _engine_unavailable(_req: Request, exc: EngineUnavailable) -> JSONResponse:
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
        return error_json(503, exc.error_type, str(exc), headers=headers)

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
