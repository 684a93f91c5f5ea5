"""Issue 12, server side: each defect of the outside security pass, reproduced over real HTTP.

Memory before auth, the JSON body cap, malformed tensors, header and body timeouts, canonical upload
signatures, upload URLs that no request header can redirect, and deleted session data that must not
survive anywhere in the data directory (the SQLite WAL included). Raw sockets where httpx would hide what
the server does (stalls, trickles, bodies that are never sent).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server import ServerConfig, create_key, start_embedded
from server.inference import InferenceResult
from server.runner import UnsafeBindError, check_bind, serve, uvicorn_config
from server.stores.sqlite import SqliteSessionStore as Store
from tests.tensors import make_payload

pytestmark = pytest.mark.timeout(120)

PAYLOAD = make_payload(duration_s=10.0)
MiB = 1024 * 1024
VITALS = {
    "heart_rate": 70.0,
    "respiratory_rate": 15.0,
    "hrv": 40.0,
    "spo2": 98.0,
    "systolic_bp": 120.0,
    "diastolic_bp": 80.0,
    "confidence": 0.8,
}
QUALITY_MARKER = "quality-marker-5b1d0c9e"


def marked_infer(measurement: Any, demographics: Any) -> InferenceResult:
    """Inference whose result carries a marker string, so the raw bytes of a stored result can be found."""
    return InferenceResult.from_vitals(dict(VITALS), {"note": QUALITY_MARKER})


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with start_embedded(
        infer=marked_infer, header_timeout_s=1.0, body_timeout_s=1.0, max_json_body_bytes=8192
    ) as srv:
        yield srv


def post(
    srv: Any, path: str, key: str | None, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    keyed = {"X-API-Key": key} if key else {}
    return httpx.post(f"{srv.base_url}{path}", headers={**keyed, **(headers or {})}, timeout=30.0, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and set(body) == {"error", "message", "retryable"}
    return body


def status_of(srv: Any, session_id: str) -> str:
    response = httpx.get(
        f"{srv.base_url}/sdk/session/result/{session_id}", headers={"X-API-Key": srv.api_key}, timeout=10
    )
    return response.json()["status"]


def started(srv: Any, body: Any = None) -> dict[str, Any]:
    response = post(srv, "/sdk/session/start", srv.api_key, json=body or {})
    assert response.status_code == 200, response.text
    return response.json()


def raw_connect(url: str) -> tuple[socket.socket, httpx.URL]:
    target = httpx.URL(url)
    sock = socket.create_connection((target.host, target.port), timeout=10)
    return sock, target


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout_s` passes: then fail)."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout_s} s; got {data[:200]!r}") from None
        if not chunk:
            return data
        data += chunk


# ---- 1. bounded memory before auth ----------------------------------------------------------------------


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the process's peak resident set, which a freed buffer cannot hide afterwards."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def send_huge_body(port: int, head: bytes, body_bytes: int, chunked: bool) -> int:
    """Send `head` and then up to `body_bytes` of body; returns how much the server let us send."""
    block = b"x" * MiB
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
            while sent < body_bytes:
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                sent += len(block)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server refused and closed: exactly what it should do
            pass
    return sent


def test_a_huge_body_without_a_key_does_not_grow_server_memory(tmp_path: Path) -> None:
    """`vitalcam serve` in its own process: four concurrent 200 MiB bodies without a key move its peak RSS
    by less than 50 MiB (before the fix one such body grew it by 400 MiB)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = create_key(tmp_path, "acme")
    code = f"from server import serve; serve(port={port}, data_dir={str(tmp_path)!r}, log_level='warning')"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.time() < deadline, "serve() did not come up"
            time.sleep(0.1)
        # Warm up every code path once, so what follows measures the attack, not lazy imports.
        warm = httpx.post(f"{base_url}/sdk/session/start", headers={"X-API-Key": key}, json={}, timeout=10)
        assert warm.status_code == 200
        assert httpx.post(f"{base_url}/sdk/session/start", json={}, timeout=10).status_code == 401
        before = peak_rss_bytes(process.pid)

        body_bytes = 200 * MiB
        heads = [
            (
                f"POST /sdk/session/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {body_bytes}\r\n\r\n"
            ).encode(),
            b"POST /sdk/session/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            # A wrong key is no better than none.
            (
                f"POST /sdk/session/upload-complete HTTP/1.1\r\nHost: x\r\nX-API-Key: ck_test_{'0' * 48}\r\n"
                f"Content-Length: {body_bytes}\r\n\r\n"
            ).encode(),
            b"POST /sdk/session/upload-complete HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]
        sent: list[int] = [0] * len(heads)

        def attack(i: int) -> None:
            sent[i] = send_huge_body(port, heads[i], body_bytes, chunked=b"chunked" in heads[i])

        threads = [threading.Thread(target=attack, args=(i,)) for i in range(len(heads))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        growth = peak_rss_bytes(process.pid) - before
        assert growth < 50 * MiB, (
            f"peak RSS grew by {growth / MiB:.0f} MiB (sent {[s // MiB for s in sent]} MiB)"
        )
        assert httpx.get(f"{base_url}/health", timeout=5).status_code == 200
    finally:
        process.terminate()
        process.wait(10)


def test_the_key_is_checked_before_the_body_is_read(server: Any) -> None:
    """No key and a declared body of 1 GiB: the 401 comes at once, with no body byte sent at all."""
    sock, _ = raw_connect(server.base_url)
    with sock:
        sock.sendall(
            b"POST /sdk/session/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n"
        )
        answer = read_until_closed(sock, 10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:300]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"] == "API_KEY_INVALID"


def test_json_bodies_are_capped_with_a_streamed_413(server: Any) -> None:
    padding = "x" * 9000
    declared = post(server, "/sdk/session/start", server.api_key, json={"demographics": {"pad": padding}})
    assert "8192-byte limit" in assert_error(declared, 413, "PAYLOAD_TOO_LARGE")["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as soon as the count passes the cap
        for _ in range(1000):
            yield b" " * 4096

    streamed = post(server, "/sdk/session/start", server.api_key, content=chunks())
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
    complete = post(server, "/sdk/session/upload-complete", server.api_key, content=b"{" + b" " * 10000)
    assert_error(complete, 413, "PAYLOAD_TOO_LARGE")
    # Within the cap everything behaves as before, including the field-naming 400s.
    assert post(server, "/sdk/session/start", server.api_key, json={"demographics": {"age": 40}}).is_success
    bad = post(server, "/sdk/session/start", server.api_key, json={"demographics": {"age": 400}})
    assert assert_error(bad, 400, "INVALID_REQUEST")["message"].startswith("demographics.age:")


# ---- 3. malformed tensors are 400, and the session stays usable ------------------------------------------


def with_header_text(payload: bytes, edit: Any) -> bytes:
    """Rewrite the JSON header as text (so it can hold what json.dumps would never write)."""
    (n,) = struct.unpack("<Q", payload[:8])
    text = edit(payload[8 : 8 + n].decode())
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + payload[8 + n :]


def _many_dims(text: str) -> str:
    header = json.loads(text)
    header["t_s"]["shape"] = header["t_s"]["shape"] + [1] * 40  # same element count, 41 dimensions
    return json.dumps(header)


def _huge_int(text: str) -> str:
    header = json.loads(text)
    header["t_s"]["data_offsets"][0] = 123456789
    return json.dumps(header).replace("123456789", "1" + "0" * 4999, 1)


def _unencodable_name(text: str) -> str:
    header = json.loads(text)
    header["\ud800"] = header["t_s"]  # a lone surrogate: valid JSON, not encodable as UTF-8
    return json.dumps(header)


MALFORMED_TENSORS = {
    "deep nesting": lambda t: t.rstrip()[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}",
    "5000-digit integer": _huge_int,
    "41 dimensions": _many_dims,
    "unencodable tensor name": _unencodable_name,
}


@pytest.mark.parametrize("name", list(MALFORMED_TENSORS))
def test_malformed_tensor_is_400_and_the_session_stays_usable(server: Any, name: str) -> None:
    session = started(server)
    bad = with_header_text(PAYLOAD, MALFORMED_TENSORS[name])
    response = httpx.put(session["upload_url"], content=bad, timeout=30)
    error = assert_error(response, 400, "INVALID_REQUEST")
    assert error["retryable"] is False
    assert error["message"].startswith(("header:", "t_s:", "\\ud800:")), error["message"]
    assert status_of(server, session["session_id"]) == "created"
    assert httpx.put(session["upload_url"], content=PAYLOAD, timeout=30).status_code == 200


# ---- 4. header and body timeouts ---------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed(server: Any) -> None:
    sock, _ = raw_connect(server.base_url)
    started_s = time.monotonic()
    with sock:
        assert read_until_closed(sock, 10) == b""
    assert time.monotonic() - started_s < 3 * server.config.header_timeout_s


def test_headers_that_trickle_in_are_cut_off(server: Any) -> None:
    """One byte every 0.2 s never completes a request: closed after header_timeout_s, not held for ever."""
    sock, _ = raw_connect(server.base_url)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
    started_s = time.monotonic()
    closed = False
    with sock:
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started_s > 3 * server.config.header_timeout_s:
                break
        if not closed:
            assert read_until_closed(sock, 2) == b""
    assert time.monotonic() - started_s < 3 * server.config.header_timeout_s


def test_the_next_request_after_a_response_must_arrive_in_time(server: Any) -> None:
    """A kept-alive connection whose next request trickles in is closed (uvicorn's keep-alive timer stops
    at the first byte)."""
    sock, _ = raw_connect(server.base_url)
    with sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started_s = time.monotonic()
        with pytest.raises(OSError):  # the write fails once the server has closed
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
            raise AssertionError("the connection was still open after 20 s")
    assert time.monotonic() - started_s < 3 * server.config.header_timeout_s + 1


def test_a_refused_upload_closes_instead_of_reading_the_body(server: Any) -> None:
    sock, _ = raw_connect(server.base_url)
    with sock:
        sock.sendall(
            f"PUT /sdk/upload/{'0' * 8}-0000-4000-8000-{'0' * 12}?expires=1&signature=00 HTTP/1.1\r\n"
            f"Host: x\r\nContent-Length: {64 * MiB}\r\n\r\n".encode()
        )
        answer = read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 403") and b"connection: close" in answer.lower()


def test_a_json_body_that_trickles_is_408(server: Any) -> None:
    sock, _ = raw_connect(server.base_url)
    started_s = time.monotonic()
    with sock:
        sock.sendall(
            f"POST /sdk/session/start HTTP/1.1\r\nHost: x\r\nX-API-Key: {server.api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2000\r\n\r\n".encode()
        )
        answer = b""
        sock.settimeout(0.05)
        for _ in range(2000):  # one byte every 50 ms, until the server answers
            try:
                sock.sendall(b" ")
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
        answer += read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "REQUEST_TIMEOUT"
    assert time.monotonic() - started_s < 3 * server.config.body_timeout_s + 1


def test_a_stalled_upload_times_out_and_the_session_can_be_uploaded_again(server: Any) -> None:
    session = started(server)
    sock, target = raw_connect(session["upload_url"])
    started_s = time.monotonic()
    with sock:
        head = f"PUT {target.raw_path.decode()} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n"
        sock.sendall(head.encode() + PAYLOAD[:5000])  # then nothing: the client hangs mid-body
        answer = read_until_closed(sock, 10)
    elapsed_s = time.monotonic() - started_s
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "REQUEST_TIMEOUT",
        "message": "Upload stalled: nothing arrived for 1 s",
        "retryable": True,
    }
    assert elapsed_s < 3 * server.config.body_timeout_s
    assert status_of(server, session["session_id"]) == "created"
    assert not list((server.config.data_dir / "uploads").glob(f"{session['session_id']}*"))
    assert httpx.put(session["upload_url"], content=PAYLOAD, timeout=30).status_code == 200


def test_an_upload_trickling_past_its_deadline_is_cut_off(tmp_path: Path) -> None:
    """Bytes that keep coming just often enough to dodge the stall timeout still hit the whole-body limit."""
    with start_embedded(
        data_dir=tmp_path, infer=marked_infer, body_timeout_s=1.0, upload_timeout_s=1.5
    ) as srv:
        session = started(srv)
        sock, target = raw_connect(session["upload_url"])
        started_s = time.monotonic()
        with sock:
            head = f"PUT {target.raw_path.decode()} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n"
            sock.sendall(head.encode())
            with pytest.raises(OSError):  # the write fails once the server has closed
                for start in range(0, len(PAYLOAD), 100):
                    sock.sendall(PAYLOAD[start : start + 100])
                    time.sleep(0.3)
                    if time.monotonic() - started_s > 6:
                        raise AssertionError("upload still accepted after 6 s")
        assert time.monotonic() - started_s < 3 * 1.5
        deadline = time.monotonic() + 5
        while status_of(srv, session["session_id"]) != "created" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status_of(srv, session["session_id"]) == "created"


# ---- 5. canonical upload signatures ------------------------------------------------------------------------


def test_the_upload_url_accepts_only_its_exact_expiry_text(server: Any) -> None:
    session = started(server)
    url, expires = session["upload_url"], str(session["expires_at"])
    for variant in (
        "0" + expires,
        "00" + expires,
        "+" + expires,
        expires + "%20",
        "%20" + expires,
        expires + ".0",
    ):
        tampered = url.replace(f"expires={expires}", f"expires={variant}")
        response = httpx.put(tampered, content=PAYLOAD, timeout=30)
        assert "signature is invalid" in assert_error(response, 403, "FORBIDDEN")["message"], variant
    assert status_of(server, session["session_id"]) == "created"
    assert httpx.put(url, content=PAYLOAD, timeout=30).status_code == 200


# ---- 7. upload URLs no request header can redirect ---------------------------------------------------------


def test_upload_urls_ignore_host_and_forwarded_headers(server: Any) -> None:
    hostile = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
        "X-Forwarded-For": "203.0.113.9",
        "Forwarded": "for=203.0.113.9;host=evil.example;proto=https",
    }
    response = httpx.post(
        f"{server.base_url}/sdk/session/start",
        headers={"X-API-Key": server.api_key, **hostile},
        json={},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["upload_url"].startswith(f"{server.base_url}/sdk/upload/{body['session_id']}?")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "vitals.example"])
def test_serve_refuses_a_non_loopback_address_without_a_public_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.delenv("VITALCAM_PUBLIC_BASE_URL", raising=False)
    with pytest.raises(UnsafeBindError, match="VITALCAM_PUBLIC_BASE_URL"):
        serve(host=host, port=0, data_dir=tmp_path)
    check_bind(host, ServerConfig(data_dir=tmp_path, public_base_url="https://vitals.example"))


def test_serve_still_fails_loudly_when_the_port_is_taken(tmp_path: Path) -> None:
    """serve() builds its own uvicorn.Server (for the header timeout); a failed start is still exit 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as info:
            serve(port=taken.getsockname()[1], data_dir=tmp_path, log_level="critical")
    assert info.value.code == 3


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_public_url(tmp_path: Path, host: str) -> None:
    check_bind(host, ServerConfig(data_dir=tmp_path))


def test_forwarded_headers_are_believed_only_from_configured_proxies(tmp_path: Path) -> None:
    default = uvicorn_config(object(), ServerConfig(data_dir=tmp_path), "127.0.0.1", 0, "warning")
    assert default.proxy_headers is False  # uvicorn's own default believes every loopback peer
    behind_proxy = ServerConfig.from_env(
        {
            "VITALCAM_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16",
            "VITALCAM_PUBLIC_BASE_URL": "https://v.example",
        },
        data_dir=tmp_path,
    )
    configured = uvicorn_config(object(), behind_proxy, "127.0.0.1", 0, "warning")
    assert configured.proxy_headers is True
    assert configured.forwarded_allow_ips == ["10.0.0.5", "10.1.0.0/16"]
    with pytest.raises(ValueError, match="public_base_url"):
        ServerConfig(data_dir=tmp_path, trusted_proxies=("10.0.0.5",))
    with pytest.raises(ValueError, match="not an IP address"):
        ServerConfig(data_dir=tmp_path, trusted_proxies=("*",), public_base_url="https://v.example")
    with pytest.raises(ValueError, match="public_base_url"):
        ServerConfig(data_dir=tmp_path, public_base_url="evil.example/path?x=1")


# ---- 2. no session bytes left on disk ---------------------------------------------------------------------


def files_containing(data_dir: Path, needle: bytes) -> list[str]:
    """Every file in the data directory whose raw bytes contain `needle` (database, WAL, shm, uploads)."""
    return [
        str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file() and needle in p.read_bytes()
    ]


def stored_demographics(demographics: dict[str, Any]) -> bytes:
    return json.dumps(demographics).encode()  # how the server writes them into the sessions table


def test_no_byte_of_a_session_survives_its_upload_complete(tmp_path: Path) -> None:
    """PERSIST_VITALS=false: after the response, neither the id nor the demographics are in any file."""
    with start_embedded(data_dir=tmp_path, infer=marked_infer) as srv:
        gone_demo = {"age": 97, "sex": "F", "fitzpatrick": 5}
        kept_demo = {"age": 23, "sex": "M", "fitzpatrick": 2}
        gone = started(srv, {"demographics": gone_demo})
        kept = started(srv, {"demographics": kept_demo})  # still waiting for its upload
        for _ in range(3):  # some traffic of its own, as in the report (4-5 copies in the WAL)
            status_of(srv, gone["session_id"])
        assert httpx.put(gone["upload_url"], content=PAYLOAD, timeout=30).status_code == 200
        assert files_containing(tmp_path, gone["session_id"].encode())  # it is on disk before the response
        complete = post(
            srv, "/sdk/session/upload-complete", srv.api_key, json={"session_id": gone["session_id"]}
        )
        assert complete.json()["quality"]["note"] == QUALITY_MARKER
        assert files_containing(tmp_path, gone["session_id"].encode()) == []
        assert files_containing(tmp_path, stored_demographics(gone_demo)) == []
        assert files_containing(tmp_path, QUALITY_MARKER.encode()) == []
        assert files_containing(tmp_path, PAYLOAD[-4096:]) == []
        # The scan does find what must still be there: the other session, which has not completed.
        assert files_containing(tmp_path, kept["session_id"].encode())
        assert files_containing(tmp_path, stored_demographics(kept_demo))


def test_a_persisted_result_leaves_no_bytes_after_expiry(tmp_path: Path) -> None:
    """PERSIST_VITALS=true keeps the result until expiry, and not one byte of it after."""
    demographics = {"age": 88, "sex": "X", "fitzpatrick": 6}
    with start_embedded(
        persist_vitals=True, data_dir=tmp_path, infer=marked_infer, session_ttl_s=2, sweep_interval_s=0.1
    ) as srv:
        session = started(srv, {"demographics": demographics})
        assert httpx.put(session["upload_url"], content=PAYLOAD, timeout=30).status_code == 200
        done = post(
            srv, "/sdk/session/upload-complete", srv.api_key, json={"session_id": session["session_id"]}
        )
        assert done.status_code == 200
        assert files_containing(tmp_path, QUALITY_MARKER.encode())  # stored, as PERSIST_VITALS asks
        deadline = time.time() + 10
        while status_of(srv, session["session_id"]) != "expired" and time.time() < deadline:
            time.sleep(0.1)
        assert status_of(srv, session["session_id"]) == "expired"
        time.sleep(0.3)  # the sweep that marked it expired has finished its checkpoint
        assert files_containing(tmp_path, QUALITY_MARKER.encode()) == []
        assert files_containing(tmp_path, stored_demographics(demographics)) == []


def test_the_store_sets_secure_delete_itself(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        assert tuple(store._conn.execute("PRAGMA secure_delete").fetchone()) == (1,)
    finally:
        store.close()
