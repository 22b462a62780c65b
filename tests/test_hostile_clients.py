"""Slow and hostile HTTP clients against the real server process, over raw sockets: nothing hangs,
every refusal that can still be answered is a JSON error in the service's shape.

The server runs with short deadlines (1 s for headers, 1.5 s for a body) so these finish in seconds.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .server_proc import ServerProc, start_server

pytestmark = pytest.mark.slow

HEADER_TIMEOUT, BODY_TIMEOUT, MAX_HEADER, MAX_BODY, MAX_CONNECTIONS = 1.0, 1.5, 8192, 4096, 12


@pytest.fixture(scope="module", params=["httptools", "h11"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        tiny_model_dir: Path) -> Iterator[ServerProc]:
    """The real server on each HTTP/1.1 parser (httptools is the default; h11 the fallback)."""
    home = tmp_path_factory.mktemp("hostile")
    proc = start_server(home, tiny_model_dir, env={"ALIGNSERVE_MAX_BODY_BYTES": str(MAX_BODY)},
                        extra=["--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
                               "--max-header-bytes", str(MAX_HEADER), "--max-connections", str(MAX_CONNECTIONS),
                               "--drain-timeout", "2", "--http", request.param])
    try:
        yield proc
    finally:
        proc.proc.terminate()
        proc.proc.wait(20)


def connect(srv: ServerProc, timeout: float = 8.0) -> socket.socket:
    host, port = srv.base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    return s


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes, float]:
    """Status, headers, body and seconds waited, read until the body is complete or the peer closes;
    a socket timeout (the server never answered) fails the test."""
    t0 = time.monotonic()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed without a response (got {data!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    want = int(headers.get("content-length", "-1"))
    while want < 0 or len(body) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body, time.monotonic() - t0


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def error_of(headers: dict[str, str], body: bytes) -> dict[str, str]:
    assert headers["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert set(err) >= {"type", "message"}
    return err  # type: ignore[no-any-return]


def test_trickled_partial_header_gets_408_at_the_deadline(srv: ServerProc) -> None:
    s = connect(srv)
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    try:
        for i in range(6):  # one more header line every 0.3 s: it would never end on its own
            time.sleep(0.3)
            s.sendall(f"X-Slow-{i}: y\r\n".encode())
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, headers, body, _ = read_response(s)
    assert status == 408 and error_of(headers, body)["type"] == "header_timeout"
    assert time.monotonic() - t0 < HEADER_TIMEOUT + 1.5
    assert closed_by_peer(s)


def test_a_connection_that_sends_nothing_is_closed(srv: ServerProc) -> None:
    s = connect(srv)
    t0 = time.monotonic()
    assert s.recv(1) == b""  # closed, no response (nothing was asked)
    assert time.monotonic() - t0 < HEADER_TIMEOUT + 1.5


def test_chunked_body_that_never_ends_gets_408(srv: ServerProc) -> None:
    s = connect(srv)
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pro\r\n")
    status, headers, body, waited = read_response(s)
    assert status == 408 and error_of(headers, body)["type"] == "body_timeout"
    assert BODY_TIMEOUT - 0.3 < waited < BODY_TIMEOUT + 1.5
    assert headers["connection"] == "close" and closed_by_peer(s)


def test_a_slow_body_within_the_deadline_is_served(srv: ServerProc) -> None:
    s = connect(srv)
    payload = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
    half = len(payload) // 2
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + f"{half:x}\r\n".encode() + payload[:half] + b"\r\n")
    time.sleep(BODY_TIMEOUT / 2)
    rest = payload[half:]
    s.sendall(f"{len(rest):x}\r\n".encode() + rest + b"\r\n0\r\n\r\n")
    status, _, body, _ = read_response(s)
    assert status == 200, body
    # the same connection stays usable (keep-alive), and the header deadline restarts per request
    time.sleep(HEADER_TIMEOUT / 2)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(s)[0] == 200


def test_chunked_body_over_the_limit_gets_413(srv: ServerProc) -> None:
    s = connect(srv)
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 1000
    try:
        for _ in range(MAX_BODY // 1000 + 2):
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, headers, body, _ = read_response(s)
    assert status == 413 and error_of(headers, body)["type"] == "body_too_large"


def test_huge_header_in_one_piece_gets_431(srv: ServerProc) -> None:
    s = connect(srv)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    status, headers, body, _ = read_response(s)
    assert status == 431 and error_of(headers, body)["type"] == "headers_too_large"


def test_pipelined_huge_header_after_a_small_request_gets_431(srv: ServerProc) -> None:
    """Both requests in one write: the first is answered, the second's head is refused (431)."""
    s = connect(srv)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MAX_HEADER) + b"\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):  # the server closes the connection after the 431
        data += chunk
    first, _, rest = data.partition(b"\r\n\r\n")
    second = rest[rest.find(b"HTTP/1.1 "):]
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 431"), data[:400]
    assert b'"headers_too_large"' in second


def test_huge_header_trickled_gets_431(srv: ServerProc) -> None:
    s = connect(srv)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    try:
        for i in range(2 * MAX_HEADER // 500):  # never finished: only the size bound can answer in time
            s.sendall(f"X-{i}: {'b' * 490}\r\n".encode())
            time.sleep(0.005)
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, headers, body, waited = read_response(s)
    assert status == 431 and error_of(headers, body)["type"] == "headers_too_large"


def test_connections_beyond_the_bound_get_503_then_recover(srv: ServerProc) -> None:
    held = [connect(srv) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        extra = connect(srv)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = read_response(extra)
        assert status == 503 and error_of(headers, body)["type"] == "too_many_connections"
        assert headers["retry-after"] == "1"
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert httpx.get(f"{srv.base}/healthz", timeout=5).status_code == 200


def test_head_probes_over_the_real_server(srv: ServerProc) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        s = connect(srv)
        s.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status, _, body, _ = read_response(s)
        assert status == 200 and body == b"", (path, status, body)
