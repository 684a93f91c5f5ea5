"""Test helpers for the transport tests: a fault-injecting HTTP proxy and a backend to put behind it.

`FaultProxy` sits on 127.0.0.1 (ephemeral port) in front of a real server and, per scripted request,
drops the connection (before or after forwarding), delays past the client's timeout, answers with a
canned status/body/headers (at once, trickled byte by byte, or as a body of any size streamed without
holding it), or forwards with its own response headers; everything else is forwarded untouched. It records every request so tests can
assert exact attempt counts. It speaks just enough HTTP/1.1 for httpx (Content-Length bodies,
`Connection: close` on every answer) and rewrites the upstream's address in start responses so the
presigned upload URL also goes through the proxy.

`backend()` starts the reference server (`server.start_embedded`): no mock of our own server where the
real one can run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

Fault = tuple[Any, ...]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body_len: int
    fault: str
    sent_bytes: int = 0  # response bytes the proxy managed to write (for the trickle and huge faults)


@dataclass
class _Plan:
    method: str
    path_prefix: str
    faults: list[Fault] = field(default_factory=list)


class FaultProxy:
    """Forwarding proxy with scripted faults. Faults (consumed one per matching request, in order):

    ("pass",)                            forward normally
    ("drop_before",)                     read the request, close without forwarding or answering
    ("drop_after",)                      forward (the server acts on it), then close without answering
    ("delay", seconds)                   wait, then forward and answer (a client timeout fires first)
    ("respond", status, body, headers)   answer directly; body is a dict (JSON), bytes or str
    ("trickle", status, body, headers, interval_s)       the whole answer, head included, one byte per
                                                         interval (a server that never quite stops)
    ("trickle_body", status, body, headers, interval_s)  the head at once, then the body byte by byte
    ("respond_huge", status, n_bytes, headers)           a body of n_bytes, generated while sending
    ("pass_headers", headers)            forward, then answer with these headers added or replaced
    """

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_url = upstream_url.rstrip("/")
        self.requests: list[RecordedRequest] = []
        self._plans: list[_Plan] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def plan(self, method: str, path_prefix: str, *faults: Fault) -> None:
        with self._lock:
            self._plans.append(_Plan(method, path_prefix, list(faults)))

    def reset(self) -> None:
        with self._lock:
            self._plans.clear()
            self.requests.clear()

    def count(self, method: str, path_prefix: str = "/") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and r.path.startswith(path_prefix))

    def _next_fault(self, method: str, path: str) -> Fault:
        with self._lock:
            for plan in self._plans:
                if plan.method == method and path.startswith(plan.path_prefix) and plan.faults:
                    return plan.faults.pop(0)
        return ("pass",)

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            request = _read_request(sock)
        except (OSError, ValueError):
            return
        if request is None:
            return
        method, target, headers, body = request
        fault = self._next_fault(method, target)
        record = RecordedRequest(method, target, headers, len(body), fault[0])
        with self._lock:
            self.requests.append(record)
        kind = fault[0]
        if kind == "drop_before":
            _hard_close(sock)
            return
        if kind in ("trickle", "trickle_body"):
            status, payload, extra, interval_s = fault[1:5]
            head, data = _response_bytes(status, _encode(payload), {"Content-Type": _ctype(payload), **extra})
            record.sent_bytes = _trickle(sock, head, data, interval_s, head_at_once=kind == "trickle_body")
            return
        if kind == "respond_huge":
            record.sent_bytes = _send_huge(sock, fault[1], fault[2], fault[3] if len(fault) > 3 else {})
            return
        if kind == "respond":
            status, payload = fault[1], fault[2]
            extra = fault[3] if len(fault) > 3 else {}
            _write_response(
                sock, status, _encode(payload), {"Content-Type": _ctype(payload), **(extra or {})}
            )
            return
        if kind == "delay":
            time.sleep(fault[1])
        try:
            status, resp_headers, resp_body = self._forward(method, target, headers, body)
        except OSError:
            _write_response(sock, 502, b"bad gateway", {"Content-Type": "text/plain"})
            return
        if kind == "drop_after":
            _hard_close(sock)
            return
        if method == "POST" and target.startswith("/sdk/session/start"):
            resp_body = resp_body.replace(self.upstream_url.encode(), self.url.encode())
        if kind == "pass_headers":
            resp_headers = {
                k: v for k, v in resp_headers.items() if k.lower() not in {h.lower() for h in fault[1]}
            }
            resp_headers.update(fault[1])
        with contextlib.suppress(OSError):
            _write_response(sock, status, resp_body, resp_headers)

    def _forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in ("connection", "host")}
            fwd["Host"] = f"{self.upstream_host}:{self.upstream_port}"
            conn.request(method, target, body=body if body else None, headers=fwd)
            resp = conn.getresponse()
            data = resp.read()
            out = {
                k: v
                for k, v in resp.getheaders()
                if k.lower() not in ("transfer-encoding", "connection", "content-length")
            }
            return resp.status, out, data
        finally:
            conn.close()


def _read_request(sock: socket.socket) -> tuple[str, str, dict[str, str], bytes] | None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip()] = value.strip()
    length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
    body = rest
    while len(body) < length:
        chunk = sock.recv(min(1 << 20, length - len(body)))
        if not chunk:
            raise ValueError("client closed mid-body")
        body += chunk
    return method, target, headers, body


def _hard_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _encode(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


def _ctype(payload: Any) -> str:
    if isinstance(payload, bytes | str):
        return "text/html"
    return "application/json"


def _response_head(status: int, headers: dict[str, str], content_length: int) -> bytes:
    reason = http.client.responses.get(status, "Unknown")
    lines = [f"HTTP/1.1 {status} {reason}"]
    for key, value in headers.items():
        lines.append(f"{key}: {value}")
    lines += [f"Content-Length: {content_length}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _response_bytes(status: int, body: bytes, headers: dict[str, str]) -> tuple[bytes, bytes]:
    return _response_head(status, headers, len(body)), body


def _write_response(sock: socket.socket, status: int, body: bytes, headers: dict[str, str]) -> None:
    sock.sendall(_response_head(status, headers, len(body)) + body)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def _trickle(sock: socket.socket, head: bytes, body: bytes, interval_s: float, *, head_at_once: bool) -> int:
    """Send one byte per `interval_s` until done or the client hangs up; returns the bytes sent."""
    sent = 0
    try:
        if head_at_once:
            sock.sendall(head)
            sent, rest = len(head), body
        else:
            rest = head + body
        for i in range(len(rest)):
            sock.sendall(rest[i : i + 1])
            sent += 1
            time.sleep(interval_s)
    except OSError:
        pass
    finally:
        sock.close()
    return sent


def _send_huge(sock: socket.socket, status: int, n_bytes: int, headers: dict[str, str]) -> int:
    """A body of `n_bytes` made up on the fly (the proxy never holds it); returns the bytes sent."""
    block = b"[" + b" " * (1024 * 1024 - 1)
    sent = 0
    try:
        sock.sendall(_response_head(status, {"Content-Type": "application/json", **headers}, n_bytes))
        while sent < n_bytes:
            piece = block[: n_bytes - sent]
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass
    finally:
        sock.close()
    return sent


# -- the backend behind the proxy --------------------------------------------------------------------


@dataclass
class Backend:
    base_url: str
    api_key: str


@contextlib.contextmanager
def backend(persist_vitals: bool = False, **overrides: Any) -> Iterator[Backend]:
    """The reference server (`server.start_embedded`) on 127.0.0.1 with an ephemeral port and temp data."""
    from server import start_embedded

    with start_embedded(persist_vitals=persist_vitals, **overrides) as srv:
        yield Backend(srv.base_url, srv.api_key)
