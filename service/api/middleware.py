"""Pure ASGI middleware: request body limit, per-route metrics and the access log.

Pure ASGI (not ``BaseHTTPMiddleware``) so that ``http.disconnect`` reaches the handlers, which is
how a client hanging up cancels its generation.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("alignserve.access")
_QUIET = ("/metrics", "/healthz", "/readyz")


class _BodyTooLarge(Exception):
    pass


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        seen = 0

        async def receive_wrapper() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                raise _BodyTooLarge
            await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if not status["started"]:
                await self._reject(send_wrapper)
        self._observe(scope, int(status["code"]), time.perf_counter() - start)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"error": {"type": "body_too_large",
                                     "message": f"request body exceeds {self.max_body} bytes"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

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
