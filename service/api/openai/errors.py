"""OpenAI's error shape for ``/v1`` routes: ``{"error": {"message", "type", "param", "code"}}``.

The rest of alignserve answers ``{"error": {"type", "message"}}``; the /v1 routes use a route class
(``OpenAIRoute``) that turns every error raised while handling them — request validation, the
domain's errors from the shared generation path, auth's ``ApiError`` — into OpenAI's shape and
status (after the API's one status mapping, ``api.errors.status_of``), so that the
SDK raises the matching exception (``BadRequestError``, ``NotFoundError``, ``RateLimitError``...).
alignserve's specific error type travels in ``code``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from ...domain.errors import DomainError
from ..errors import ApiError, retry_headers, status_of
from .schemas import error_payload

log = logging.getLogger(__name__)

_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
# alignserve error types whose OpenAI code differs (clients such as LangChain test for OpenAI's)
_BRANCH_MISS = {"string_type", "model_type", "list_type", "dict_type", "model_attributes_type"}
_CODES = {"prompt_too_long": "context_length_exceeded", "unauthorized": "invalid_api_key"}


class OpenAIError(Exception):
    """An error raised by the /v1 routes themselves, already in OpenAI's terms."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_payload(self.message, self.type, self.param, self.code), status_code=self.status,
                            headers=self.headers)


def invalid(message: str, param: str | None = None, code: str = "invalid_request") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def from_status(status: int, type_: str, message: str, headers: dict[str, str] | None = None,
                param: str | None = None) -> OpenAIError:
    """An alignserve error (status + type) in OpenAI's terms: 422 and 413 are 400 as OpenAI answers
    invalid input; 401, 403, 404, 409, 429 and 5xx keep their status."""
    code = _CODES.get(type_, type_)
    if status in (400, 413, 422):
        return OpenAIError(400, message, param=param, code=code, headers=headers)
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(status)
    if kind is None:
        kind = "server_error" if status >= 500 else "invalid_request_error"
    return OpenAIError(status, message, type_=kind, param=param, code=code, headers=headers)


def from_api_error(exc: ApiError) -> OpenAIError:
    return from_status(exc.status, exc.type, exc.message, exc.headers)


def from_domain_error(exc: DomainError) -> OpenAIError:
    """Through the API's one mapping (``api.errors.status_of``), then into OpenAI's terms."""
    return from_status(status_of(exc), exc.code, exc.message, retry_headers(exc), exc.param)


def param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("body", "messages", 0, "content", "str")`` -> ``"messages[0].content"``: pydantic's location
    without the body marker and the union-branch tags."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ((_FIELD.match(part) and part not in _TYPE_TAGS) or out == "vllm_xargs"):
            out += f".{part}" if out else part
    return out or None


def telling_error(errors: Sequence[Any]) -> Any:
    """The error to report: for a union (``profile: str | ProfileSpec``), pydantic lists one error per
    branch; the one from the branch whose type matched says what is wrong."""
    return next((e for e in errors if e.get("type") not in _BRANCH_MISS), errors[0])


def from_validation(exc: RequestValidationError) -> OpenAIError:
    errors = list(exc.errors())
    if not errors:
        return invalid("invalid request")
    first = telling_error(errors)
    kind, msg = str(first.get("type", "")), str(first.get("msg", "invalid value"))
    if kind == "json_invalid":
        return invalid(f"the request body is not valid JSON ({msg})")
    param = param_of(tuple(first.get("loc", ())))
    if kind == "extra_forbidden":
        return invalid(f"Unrecognized request argument supplied: {param}", param, code="unrecognized_argument")
    if kind == "model_attributes_type" and param is None:
        return invalid("the request body must be a JSON object")
    return invalid(f"{param}: {msg}" if param else msg, param)


def to_openai(exc: Exception) -> OpenAIError | None:
    """The OpenAI form of an error the shared API code raises, or None for a bug."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return from_validation(exc)
    if isinstance(exc, ApiError):
        return from_api_error(exc)
    if isinstance(exc, DomainError):
        return from_domain_error(exc)
    return None


class OpenAIRoute(APIRoute):
    """A route whose errors come out in OpenAI's shape (validation and auth included: both run
    inside the route handler)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                err = to_openai(exc)
                if err is None:
                    log.exception("unhandled error", extra={"path": request.url.path})
                    err = OpenAIError(500, "internal server error", type_="server_error", code="internal_error")
                return err.response()

        return handle
