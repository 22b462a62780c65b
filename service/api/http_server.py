"""The HTTP server around the app: uvicorn's httptools (or h11) protocol with deadlines and bounds for slow or
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

try:  # the C parser (a dependency on Linux); h11 is the pure-Python fallback
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover
    httptools = None  # type: ignore[assignment]
    HttpToolsProtocol = H11Protocol  # type: ignore[misc,assignment]

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


class _HeadDeadline:
    """The header deadline's timer, shared by both guarded protocols (each says when it fires)."""

    limits: ClassVar[ConnectionLimits]
    _head_timer: asyncio.TimerHandle | None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    app: Any

    def _head_timed_out(self) -> None:
        raise NotImplementedError

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _admit(self) -> None:
        """At connection_made, after the protocol's own set-up: the connection bound, then the
        header deadline for the first request."""
        if len(self.connections) > self.limits.max_connections:
            self.app = _too_many_connections  # every request on this connection: 503, then close
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]


class GuardedH11Protocol(_HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol plus the header deadline, the header bound and the connection bound."""

    limits: ClassVar[ConnectionLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._admit()

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


class _HeadRefused(Exception):
    """Raised inside httptools' header callback to stop parsing a head that is refused."""


class GuardedHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol (the C parser ``vllm serve`` also runs on) with the same guards.

    The parser buffers an incomplete head without a bound, so while no request is in progress the
    bytes up to the blank line are counted here before they are fed (431 beyond the bound); a head
    that completes inside a chunk (a pipelined one) is measured once more from its parsed pieces."""

    limits: ClassVar[ConnectionLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes of the incomplete head seen so far
        self._tail = b""  # the last bytes of the previous chunk: the blank line may straddle chunks
        self._head_open = False  # a request line has begun and its headers are not complete
        self._in_request = False  # from the end of a head to the end of its body
        self._refused = False
        self._deferred: tuple[int, str, str] | None = None
        self._admit()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_request and self._head_too_large(data):
            self._refuse(431, "headers_too_large", f"request headers exceed {self.limits.max_header_bytes} bytes")
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadRefused):
                self._refuse(431, "headers_too_large", f"request headers exceed {self.limits.max_header_bytes} bytes")
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSocket routes here
        if self._head_open or (not self._in_request and self._head_bytes):
            self._arm_head_timer()  # a head is (partly) buffered: its deadline runs from its first byte
        else:
            self._disarm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True

    def on_headers_complete(self) -> None:
        size = len(self.parser.get_method()) + len(self.url) + 13 + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.limits.max_header_bytes:
            raise _HeadRefused
        self._head_open, self._in_request = False, True
        self._head_bytes, self._tail = 0, b""
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_request = False

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle connection
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            self._unset_keepalive_if_required()
            self.transport.write(raw_error(*deferred))
            self.transport.close()
        elif self._head_open:
            self._arm_head_timer()  # a pipelined partial head is waiting

    def _head_too_large(self, data: bytes) -> bool:
        pending = self._tail + data
        end = pending.find(b"\r\n\r\n")
        if end < 0:
            self._head_bytes += len(data)
            self._tail = pending[-3:]
            return self._head_bytes > self.limits.max_header_bytes
        size = self._head_bytes + end + 4 - len(self._tail)
        self._head_bytes, self._tail = 0, b""
        return size > self.limits.max_header_bytes

    def _head_timed_out(self) -> None:
        self._head_timer = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if self.transport.is_closing() or busy or self._in_request:
            return
        if self._head_open or self._head_bytes:
            self._refuse(408, "header_timeout",
                         f"request headers not received within {self.limits.header_timeout_s:g}s")
        else:  # nothing sent: an idle connection, closed without a word
            self.transport.close()

    def _refuse(self, status: int, type_: str, message: str) -> None:
        """Answer and close; while an earlier request's response is still being sent (a pipelined
        head), stop reading and answer once that response is complete."""
        self._refused = True
        self._disarm_head_timer()
        self.logger.info("refused a request head: %s", message)
        if self.cycle is not None and not self.cycle.response_complete:
            self._deferred = (status, type_, message)
            self.transport.pause_reading()
            return
        self.transport.write(raw_error(status, type_, message))
        self.transport.close()


def protocol_for(limits: ConnectionLimits, impl: str = "auto") -> type[asyncio.Protocol]:
    """The guarded protocol class: httptools (``auto`` when it is installed) or h11."""
    base: type[Any] = GuardedH11Protocol
    if impl == "httptools" or (impl == "auto" and httptools is not None):
        base = GuardedHttpToolsProtocol
    protocol = type("Protocol", (base,), {"limits": limits})
    return protocol


def server_config(app: Any, settings: Settings, drain_s: float) -> uvicorn.Config:
    limits = ConnectionLimits(settings.header_timeout_s, settings.max_header_bytes, settings.max_connections)
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, http=protocol_for(limits, settings.http),
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
