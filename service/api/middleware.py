"""Pure ASGI middleware: request header/body limits, the body-read deadline, per-route metrics and
the access log.

Pure ASGI (not ``BaseHTTPMiddleware``) so that ``http.disconnect`` reaches the handlers, which is
how a client hanging up cancels its generation.

Limits are enforced here, in front of the routes, because the framework turns any error raised
while it reads a body into "400 There was an error parsing the body": so when a limit trips while
the app is reading, this layer answers itself (413 or 408, the error shape, ``Connection: close``),
tells the app the client is gone, and drops whatever the app tries to send afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("alignserve.access")
_QUIET = ("/metrics", "/healthz", "/readyz")
_GONE: Message = {"type": "http.disconnect"}


def error_response(status: int, type_: str, message: str,
                   headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[Message, Message]:
    """The two ASGI messages of a JSON error in the service's shape, closing the connection."""
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    start: Message = {"type": "http.response.start", "status": status,
                      "headers": [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                                  *headers]}
    return start, {"type": "http.response.body", "body": body}


def header_bytes(scope: Scope) -> int:
    """Size of the request head as received: request line plus every ``name: value`` line."""
    line = len(scope.get("method", "")) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return line + sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or [])


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_header_bytes: int | None = None,
                 body_timeout_s: float | None = None) -> None:
        self.app, self.max_body = app, max_body_bytes
        self.max_header = max_header_bytes
        self.body_timeout = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500, "started": False, "answered": False}

        async def send_wrapper(message: Message) -> None:
            if status["answered"]:  # this layer already answered (413/408): the app's reply is dropped
                return
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        async def answer(code: int, type_: str, text: str) -> None:
            if not status["started"]:
                for message in error_response(code, type_, text):
                    await send_wrapper(message)
            status["answered"] = True

        seen = 0
        body_done = False
        deadline = start + self.body_timeout if self.body_timeout else None

        async def receive_wrapper() -> Message:
            nonlocal seen, body_done
            if status["answered"]:
                return _GONE
            if body_done or deadline is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
                except TimeoutError:
                    await answer(408, "body_timeout", f"request body not received within {self.body_timeout:g}s")
                    return _GONE
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    await answer(413, "body_too_large", f"request body exceeds {self.max_body} bytes")
                    return _GONE
                body_done = not message.get("more_body", False)
            return message

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if self.max_header is not None and header_bytes(scope) > self.max_header:
            await answer(431, "headers_too_large", f"request headers exceed {self.max_header} bytes")
        elif length is not None and (not length.isdigit() or int(length) > self.max_body):
            await answer(413, "body_too_large", f"request body exceeds {self.max_body} bytes")
        else:
            await self.app(scope, receive_wrapper, send_wrapper)
        self._observe(scope, int(status["code"]), time.perf_counter() - start)

    def _observe(self, scope: Scope, code: int, elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        app: Any = scope.get("app")
        runtime = getattr(getattr(app, "state", None), "runtime", None)
        if runtime is None or route in _QUIET:
            return
        profile = (scope.get("state") or {}).get("profile_label", "none")
        runtime.metrics.requests.labels(route, str(code), profile).inc()
        runtime.metrics.request_latency.labels(route).observe(elapsed)
        log.info("request", extra={"method": scope.get("method"), "route": route, "status": code,
                                   "duration_s": round(elapsed, 4), "profile": profile})
