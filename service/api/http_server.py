"""The HTTP server around the app: uvicorn's h11 protocol with deadlines and bounds for slow or
hostile clients, and the process policy when the engine dies (drain, then exit non-zero).

Why a protocol subclass: uvicorn has no deadline for reading a request's headers (a client that
trickles a partial header holds its connection forever; a fresh connection that sends nothing
does too), checks h11's header-size bound only while a header is incomplete (a 100 KB header that
arrives in one read is accepted), and answers its own concurrency limit in text/plain. Everything
that happens *before* a request reaches the app is therefore enforced here:

- headers must be complete within ``header_timeout_s`` of the connection opening (or of the
  previous response ending): else 408 in the error shape, or a plain close when nothing was sent;
- the request line plus headers may take ``max_header_bytes``: else 431;
- beyond ``max_connections`` open connections, each request gets 503 and its connection closes.

The body's deadline and size are the ASGI layer's (``middleware.py``), where a response can still
be sent through the app's normal path.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings
from ..scheduling.health import EngineHealth
from .middleware import error_response

log = logging.getLogger(__name__)

EXIT_ENGINE_DEAD = 70  # EX_SOFTWARE: the supervisor restarts the process
EXIT_STARTUP_FAILED = 3  # uvicorn's own code when the server never started


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    max_connections: int


def raw_error(status: int, type_: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response in the service's shape, written below h11."""
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    start, body = error_response(503, "too_many_connections", "the server has too many open connections; "
                                 "retry later", headers=((b"retry-after", b"1"),))
    await send(start)
    await send(body)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the header deadline, the header bound and the connection bound."""

    limits: ClassVar[ConnectionLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self.app = _too_many_connections  # every request on this connection: 503, then close
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            self._refuse(431, "headers_too_large", f"request headers exceed {self.limits.max_header_bytes} bytes")
            return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # a head is (partly) buffered: its deadline runs from its first byte
        else:
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle connection
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm_head_timer()  # a pipelined partial head is waiting

    # ---- the head: size and deadline -----------------------------------------------------------
    def _head_too_large(self, data: bytes) -> bool:
        pending = self.conn.trailing_data[0] + data
        end = pending.find(b"\r\n\r\n")
        size = len(pending) if end < 0 else end + 4
        return size > self.limits.max_header_bytes

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if self.transport.is_closing() or busy or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:
            self._refuse(408, "header_timeout",
                         f"request headers not received within {self.limits.header_timeout_s:g}s")
        else:  # nothing sent: an idle connection, closed without a word
            self.transport.close()

    def _refuse(self, status: int, type_: str, message: str) -> None:
        self._disarm_head_timer()
        self.logger.info("refused a request head: %s", message)
        self.transport.write(raw_error(status, type_, message))
        self.transport.close()


def protocol_for(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    class Protocol(GuardedH11Protocol):
        pass

    Protocol.limits = limits
    return Protocol


def server_config(app: Any, settings: Settings, drain_s: float) -> uvicorn.Config:
    limits = ConnectionLimits(settings.header_timeout_s, settings.max_header_bytes, settings.max_connections)
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, http=protocol_for(limits),
        # auto: uvloop when installed (a dependency on Linux), as `vllm serve` runs; on CPU it took
        # 10 % less server CPU per streamed token at 256 streams (bench/results/http_overhead_loops_cpu.md)
        loop=settings.event_loop,
        timeout_graceful_shutdown=int(drain_s), timeout_keep_alive=settings.keep_alive_s,
        # h11's own bound on an incomplete head stays above ours, so that ours answers (431, JSON)
        h11_max_incomplete_event_size=settings.max_header_bytes + 64 * 1024)


def serve(app: Any, settings: Settings, health: EngineHealth, drain_s: float) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or the engine's death (drain, then ``EXIT_ENGINE_DEAD``).

    On the engine's death every engine request fails at once with 503 (the worker's doing), so the
    drain only lets those answers and other in-flight requests finish; if shutting down itself
    hangs (a wedged GPU), the process is ended ``drain_s + 15`` seconds after the death anyway."""
    server = uvicorn.Server(server_config(app, settings, drain_s))

    def on_engine_death(reason: str) -> None:
        log.error("engine died; draining, then exiting with %d so the process is restarted", EXIT_ENGINE_DEAD,
                  extra={"reason": reason})
        server.should_exit = True
        hard = threading.Timer(drain_s + 15.0, os._exit, args=(EXIT_ENGINE_DEAD,))
        hard.daemon = True
        hard.start()

    health.subscribe(on_engine_death)
    server.run()
    if health.dead:
        return EXIT_ENGINE_DEAD
    return 0 if server.started else EXIT_STARTUP_FAILED
