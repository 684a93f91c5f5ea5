"""The reference backend over real HTTP: uvicorn on 127.0.0.1 with an ephemeral port, no mocked app.

The inference engine is replaced by a small controllable stub (passed to `start_embedded(infer=...)`) so
each test decides whether inference succeeds, fails or blocks; one test runs the installed engine.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from server import ServerConfig, create_key, list_keys, revoke_key, start_embedded
from server.inference import InferenceFailed, InferenceResult
from server.models import VITAL_KEYS
from server.stores.sqlite import DB_NAME
from tests.tensors import make_measurement, make_payload, unchecked_bytes

pytestmark = pytest.mark.timeout(60)

LIMIT_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Usage-Current",
    "X-Usage-Limit",
    "X-Usage-Remaining",
)
SPEC_FALLBACK_CONFIG = {
    "heart_rate": {"min": 62, "max": 98},
    "hrv": {"min": 25, "max": 70},
    "respiratory_rate": {"min": 13, "max": 19},
    "spo2": {"min": 96, "max": 99},
    "systolic_bp": {"min": 109, "max": 134},
    "diastolic_bp_offset": {"min": 51, "max": 66},
    "confidence": 0.0,
}
GOOD_VITALS = {
    "heart_rate": 72.0,
    "respiratory_rate": 16.0,
    "hrv": 45.2,
    "spo2": 98.1,
    "systolic_bp": 122.0,
    "diastolic_bp": 78.0,
    "confidence": 0.87,
}
PAYLOAD = make_payload(duration_s=10.0)


class StubEngine:
    """Inference stand-in whose behaviour a test sets: ok, fail, zero, crash, or block until released."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[dict[str, Any] | None] = []
        self._lock = threading.Lock()

    def reset(self, mode: str = "ok") -> None:
        self.mode = mode
        self.release.clear()
        self.entered.clear()
        with self._lock:
            self.calls.clear()

    def __call__(self, measurement: Any, demographics: Any) -> InferenceResult:
        with self._lock:
            self.calls.append(dict(demographics) if demographics else None)
        assert measurement.n_frames > 1
        if self.mode == "fail":
            raise InferenceFailed("NO_FACE", "no face in 80% of frames")
        if self.mode == "crash":
            raise RuntimeError("boom")
        if self.mode == "block":
            self.entered.set()
            assert self.release.wait(20)
        quality = {"confidence": {"heart_rate": 0.9}, "source": {"heart_rate": "measured", "spo2": "prior"}}
        if self.mode == "zero":
            return InferenceResult.from_vitals({**GOOD_VITALS, "confidence": 0.0}, quality)
        return InferenceResult.from_vitals(dict(GOOD_VITALS), quality)


ENGINE = StubEngine()


class Api:
    """A thin httpx wrapper: the key header, and the three calls of a session."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=30.0)

    def start(self, body: Any = None) -> httpx.Response:
        return self.http.post("/sdk/session/start", json=body)

    def put(self, url: str, content: bytes = PAYLOAD) -> httpx.Response:
        return httpx.put(url, content=content, headers={"Content-Type": "video/webm"}, timeout=30.0)

    def complete(self, session_id: str) -> httpx.Response:
        return self.http.post("/sdk/session/upload-complete", json={"session_id": session_id})

    def result(self, session_id: str) -> httpx.Response:
        return self.http.get(f"/sdk/session/result/{session_id}")

    def uploaded_session(self, body: Any = None) -> dict[str, Any]:
        started = self.start(body)
        assert started.status_code == 200, started.text
        put = self.put(started.json()["upload_url"])
        assert put.status_code == 200, put.text
        return started.json()


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with start_embedded(infer=ENGINE, sweep_interval_s=0.2) as srv:
        yield srv


@pytest.fixture
def api(server: Any) -> Iterator[Api]:
    ENGINE.reset()
    client = Api(server.base_url, server.api_key)
    yield client
    client.http.close()


@pytest.fixture
def persist_server(tmp_path: Path) -> Iterator[Any]:
    ENGINE.reset()
    with start_embedded(persist_vitals=True, data_dir=tmp_path / "data", infer=ENGINE) as srv:
        yield srv


def assert_error(response: httpx.Response, status: int, code: str, retryable: bool = False) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "retryable"}
    assert body["error"] == code
    assert body["retryable"] is retryable
    assert isinstance(body["message"], str) and body["message"]
    return body


def session_rows(data_dir: Path, session_id: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        return conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchall()


# ---- health, OpenAPI, unknown routes -------------------------------------------------------------------


def test_health_has_no_auth_and_a_request_id(server: Any) -> None:
    response = httpx.get(f"{server.base_url}/health", headers={"X-Request-Id": "trace-123"})
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.headers["X-Request-Id"] == "trace-123"
    assert re.fullmatch(r"[0-9a-f]{32}", httpx.get(f"{server.base_url}/health").headers["X-Request-Id"])


def test_unknown_route_and_wrong_method_use_the_error_body(server: Any) -> None:
    assert_error(httpx.get(f"{server.base_url}/nope"), 404, "NOT_FOUND")
    assert_error(httpx.get(f"{server.base_url}/sdk/session/start"), 405, "METHOD_NOT_ALLOWED")


def test_openapi_describes_the_endpoints_truthfully(server: Any) -> None:
    doc = httpx.get(f"{server.base_url}/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) == {
        "/health",
        "/sdk/session/start",
        "/sdk/upload/{session_id}",
        "/sdk/session/upload-complete",
        "/sdk/session/result/{sessionId}",
    }
    put = paths["/sdk/upload/{session_id}"]["put"]
    assert put["requestBody"]["content"]["video/webm"]["schema"] == {"type": "string", "format": "binary"}
    assert {"400", "403", "404", "413"} <= set(put["responses"])
    complete = paths["/sdk/session/upload-complete"]["post"]
    assert {"200", "400", "401", "403", "404", "410", "429"} <= set(complete["responses"])
    assert "X-Usage-Remaining" in complete["responses"]["200"]["headers"]
    assert all("422" not in op["responses"] for item in paths.values() for op in item.values())
    assert doc["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    schemas = doc["components"]["schemas"]
    assert set(schemas["Vitals"]["properties"]) == set(VITAL_KEYS)
    assert "processing_time_ms" not in schemas["UploadCompleteResponse"]["required"]


# ---- auth ----------------------------------------------------------------------------------------------


def test_every_key_failure_is_the_same_401(server: Any) -> None:
    revoked = create_key(server.config.data_dir, "revoked-dev")
    revoke_key(server.config.data_dir, revoked[: len("ck_test_") + 12])
    genuine = server.api_key
    wrong_secret = genuine[:-4] + ("0000" if not genuine.endswith("0000") else "1111")
    keys: list[str | None] = [
        None,
        "",
        "not-a-key",
        "ck_test_short",
        "ck_prod_" + "a" * 48,
        "ck_test_" + "f" * 48,
        wrong_secret,
        revoked,
        genuine.upper(),
    ]
    bodies = []
    for key in keys:
        headers = {} if key is None else {"X-API-Key": key}
        response = httpx.post(f"{server.base_url}/sdk/session/start", headers=headers, json={})
        bodies.append(assert_error(response, 401, "API_KEY_INVALID"))
        assert "X-RateLimit-Limit" not in response.headers
        get = httpx.get(f"{server.base_url}/sdk/session/result/{uuid.uuid4()}", headers=headers)
        assert get.json() == bodies[0]
    assert all(body == bodies[0] for body in bodies)


def test_missing_key_wins_over_an_invalid_body(server: Any) -> None:
    response = httpx.post(f"{server.base_url}/sdk/session/start", json={"demographics": {"age": 999}})
    assert_error(response, 401, "API_KEY_INVALID")


def test_key_admin_lists_no_secrets_and_revokes_by_id(tmp_path: Path) -> None:
    key = create_key(tmp_path, "acme", live=True)
    assert re.fullmatch(r"ck_live_[0-9a-f]{48}", key)
    (info,) = list_keys(tmp_path)
    assert info.developer == "acme" and info.live and info.active
    assert key.startswith(info.key_id) and len(info.key_id) < len(key)
    assert key not in repr(info)
    with pytest.raises(KeyError):
        revoke_key(tmp_path, "ck_live_ffffffffffff")
    revoke_key(tmp_path, info.key_id)
    assert not list_keys(tmp_path)[0].active
    db = (tmp_path / DB_NAME).read_bytes()
    assert key.encode() not in db


# ---- session start -------------------------------------------------------------------------------------


def test_start_returns_the_spec_shape_and_headers(api: Api, server: Any) -> None:
    before_s = time.time()
    response = api.start({"demographics": {"age": 35, "sex": "M", "fitzpatrick": 3}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"session_id", "expires_at", "upload_url", "fallback_config"}
    assert uuid.UUID(body["session_id"]).version == 4
    assert before_s + 1800 - 2 <= body["expires_at"] <= time.time() + 1800 + 1
    assert re.fullmatch(
        rf"{re.escape(server.base_url)}/sdk/upload/{body['session_id']}\?expires={body['expires_at']}"
        r"&signature=[0-9a-f]{64}",
        body["upload_url"],
    )
    assert body["fallback_config"] == SPEC_FALLBACK_CONFIG
    headers = response.headers
    assert headers["X-RateLimit-Limit"] == "300" and headers["X-Usage-Limit"] == "500"
    assert int(headers["X-RateLimit-Reset"]) > time.time()
    assert int(headers["X-Usage-Current"]) + int(headers["X-Usage-Remaining"]) == 500
    again = api.start()
    assert int(again.headers["X-Usage-Current"]) == int(headers["X-Usage-Current"]) + 1
    assert int(again.headers["X-RateLimit-Remaining"]) == int(headers["X-RateLimit-Remaining"]) - 1


@pytest.mark.parametrize(
    "body",
    [None, {}, {"demographics": None}, {"demographics": {"sex": "X"}}, {"demographics": {"age": 35.0}}],
)
def test_start_body_and_demographics_are_optional(api: Api, body: Any) -> None:
    assert api.start(body).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"demographics": {"age": 0}}, "demographics.age"),
        ({"demographics": {"age": 121}}, "demographics.age"),
        ({"demographics": {"age": "35"}}, "demographics.age"),
        ({"demographics": {"age": 35.5}}, "demographics.age"),
        ({"demographics": {"age": True}}, "demographics.age"),
        ({"demographics": {"sex": "male"}}, "demographics.sex"),
        ({"demographics": {"fitzpatrick": 7}}, "demographics.fitzpatrick"),
        ({"demographics": {"height": 180}}, "demographics.height"),
        ({"demographics": "old"}, "demographics"),
        ({"extra": 1}, "extra"),
        ([1, 2], "body"),
    ],
)
def test_start_rejects_invalid_demographics_naming_the_field(api: Api, body: Any, field: str) -> None:
    response = api.start(body)
    error = assert_error(response, 400, "INVALID_REQUEST")
    assert error["message"].startswith(f"{field}:"), error["message"]
    assert all(name in response.headers for name in LIMIT_HEADERS)


def test_malformed_json_is_400(api: Api) -> None:
    response = api.http.post(
        "/sdk/session/start", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "INVALID_REQUEST")


# ---- upload-complete: inference and fallback ------------------------------------------------------------


def test_successful_inference_returns_vitals_quality_and_time(api: Api) -> None:
    session = api.uploaded_session({"demographics": {"age": 35, "sex": "F"}})
    response = api.complete(session["session_id"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"session_id", "status", "vitals", "processing_time_ms", "quality"}
    assert body["status"] == "completed" and body["session_id"] == session["session_id"]
    assert body["vitals"] == GOOD_VITALS
    assert body["quality"]["source"] == {"heart_rate": "measured", "spo2": "prior"}
    assert body["processing_time_ms"] >= 0
    assert ENGINE.calls == [{"age": 35, "sex": "F"}]
    assert all(name in response.headers for name in LIMIT_HEADERS)


@pytest.mark.parametrize(
    ("mode", "reason"), [("fail", "NO_FACE"), ("zero", "LOW_CONFIDENCE"), ("crash", "INTERNAL")]
)
def test_failed_inference_answers_completed_with_fallback_vitals(api: Api, mode: str, reason: str) -> None:
    ENGINE.reset(mode)
    session = api.uploaded_session()
    response = api.complete(session["session_id"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"session_id", "status", "vitals", "quality"}  # no processing_time_ms
    assert body["status"] == "completed"
    assert body["quality"]["reason"] == reason and body["quality"]["fallback"] is True
    assert body["quality"]["message"]
    assert_fallback_vitals(body["vitals"], session["fallback_config"])


def assert_fallback_vitals(vitals: dict[str, Any], config: dict[str, Any]) -> None:
    assert list(vitals) == list(VITAL_KEYS)
    assert vitals["confidence"] == 0.0
    for key in ("heart_rate", "respiratory_rate", "hrv", "spo2", "systolic_bp"):
        assert config[key]["min"] <= vitals[key] <= config[key]["max"], key
    offset = vitals["systolic_bp"] - vitals["diastolic_bp"]
    assert config["diastolic_bp_offset"]["min"] <= offset <= config["diastolic_bp_offset"]["max"]


def test_installed_engine_answers_with_the_spec_shape(tmp_path: Path) -> None:
    """Whatever the real engine concludes about synthetic traces, the answer has the spec's shape."""
    with start_embedded(data_dir=tmp_path) as srv:
        api = Api(srv.base_url, srv.api_key)
        session = api.start().json()
        payload = make_payload(duration_s=20.0, hr_bpm=75.0, seed=3)
        assert api.put(session["upload_url"], payload).status_code == 200
        body = api.complete(session["session_id"]).json()
    assert body["status"] == "completed"
    assert list(body["vitals"]) == list(VITAL_KEYS)
    assert isinstance(body["quality"], dict)
    if body["vitals"]["confidence"] == 0.0:
        assert body["quality"]["fallback"] is True and "processing_time_ms" not in body
    else:
        assert body["processing_time_ms"] > 0


def test_nothing_remains_after_the_response_without_persist_vitals(api: Api, server: Any) -> None:
    session = api.uploaded_session({"demographics": {"age": 50}})
    session_id = session["session_id"]
    data_dir = server.config.data_dir
    assert len(session_rows(data_dir, session_id)) == 1
    assert (data_dir / "uploads" / f"{session_id}.bin").exists()
    assert api.complete(session_id).status_code == 200
    assert session_rows(data_dir, session_id) == []
    assert not any(session_id in path.name for path in data_dir.rglob("*"))
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        dump = "\n".join(conn.iterdump())
    assert session_id not in dump
    assert_error(api.complete(session_id), 404, "SESSION_NOT_FOUND")
    assert_error(api.result(session_id), 404, "SESSION_NOT_FOUND")


def test_upload_complete_errors(api: Api, server: Any) -> None:
    assert_error(api.complete(str(uuid.uuid4())), 404, "SESSION_NOT_FOUND")
    started = api.start().json()
    error = assert_error(api.complete(started["session_id"]), 400, "INVALID_REQUEST")
    assert "upload" in error["message"].lower()
    missing = assert_error(api.http.post("/sdk/session/upload-complete", json={}), 400, "INVALID_REQUEST")
    assert missing["message"].startswith("session_id:")
    wrong_type = api.http.post("/sdk/session/upload-complete", json={"session_id": 5})
    assert assert_error(wrong_type, 400, "INVALID_REQUEST")["message"].startswith("session_id:")


def test_another_developers_session_is_403(api: Api, server: Any) -> None:
    other = Api(server.base_url, create_key(server.config.data_dir, "someone-else"))
    session = api.uploaded_session()
    assert_error(other.complete(session["session_id"]), 403, "FORBIDDEN")
    assert_error(other.result(session["session_id"]), 403, "FORBIDDEN")
    # Another key of the same developer may use it.
    same_dev = Api(server.base_url, create_key(server.config.data_dir, "embedded"))
    assert same_dev.result(session["session_id"]).json()["status"] == "uploading"
    assert same_dev.complete(session["session_id"]).status_code == 200


def test_result_reports_status_through_the_lifecycle(api: Api) -> None:
    started = api.start().json()
    response = api.result(started["session_id"])
    assert response.status_code == 200
    assert response.json() == {"session_id": started["session_id"], "status": "created"}
    assert all(name in response.headers for name in LIMIT_HEADERS)
    assert api.put(started["upload_url"]).status_code == 200
    assert api.result(started["session_id"]).json()["status"] == "uploading"


# ---- uploads -------------------------------------------------------------------------------------------


def test_upload_signature_tampering_is_403(api: Api) -> None:
    started = api.start().json()
    url = started["upload_url"]
    other = api.start().json()
    signature = url.rsplit("signature=", 1)[1]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered_urls = [
        url.replace(signature, flipped),
        url.replace(f"expires={started['expires_at']}", f"expires={started['expires_at'] + 3600}"),
        url.replace(started["session_id"], other["session_id"]),
        url.split("&signature=")[0],
        url.split("?")[0],
        url.replace(signature, signature.upper()),
    ]
    for tampered in tampered_urls:
        assert_error(api.put(tampered), 403, "FORBIDDEN")
    assert api.result(started["session_id"]).json()["status"] == "created"
    assert api.result(other["session_id"]).json()["status"] == "created"
    assert api.put(url).status_code == 200


def test_upload_url_accepts_one_successful_put(api: Api) -> None:
    started = api.start().json()
    first = api.put(started["upload_url"])
    assert first.status_code == 200
    assert first.json() == {
        "session_id": started["session_id"],
        "status": "uploading",
        "received_bytes": len(PAYLOAD),
    }
    assert "used" in assert_error(api.put(started["upload_url"]), 403, "FORBIDDEN")["message"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "payload: truncated"),
        (b"\x00" * 7, "payload: truncated"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "header: "),
        (make_payload(duration_s=10.0)[:-100], "truncated"),
        (unchecked_bytes(make_measurement(duration_s=3.0)), "t_s: duration"),
    ],
)
def test_malformed_upload_is_400_and_the_session_can_upload_again(
    api: Api, payload: bytes, message: str
) -> None:
    started = api.start().json()
    error = assert_error(api.put(started["upload_url"], payload), 400, "INVALID_REQUEST")
    assert message in error["message"], error["message"]
    assert api.result(started["session_id"]).json()["status"] == "created"
    assert_error(api.complete(started["session_id"]), 400, "INVALID_REQUEST")
    assert api.put(started["upload_url"]).status_code == 200
    assert api.complete(started["session_id"]).json()["vitals"] == GOOD_VITALS


def test_oversize_upload_is_413_streamed_and_retryable(tmp_path: Path) -> None:
    with start_embedded(data_dir=tmp_path, infer=ENGINE, max_upload_bytes=len(PAYLOAD)) as srv:
        api = Api(srv.base_url, srv.api_key)
        started = api.start().json()
        too_big = PAYLOAD + b"\x00" * (3 * len(PAYLOAD))
        assert_error(api.put(started["upload_url"], too_big), 413, "PAYLOAD_TOO_LARGE")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count while streaming
            for start in range(0, len(too_big), 16384):
                yield too_big[start : start + 16384]

        streamed = httpx.put(started["upload_url"], content=chunks(), timeout=30.0)
        assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
        assert api.result(started["session_id"]).json()["status"] == "created"
        assert list((tmp_path / "uploads").iterdir()) == []
        ENGINE.reset()
        assert api.put(started["upload_url"]).status_code == 200
        assert api.complete(started["session_id"]).status_code == 200


def test_concurrent_and_interrupted_uploads_leave_the_session_retryable(api: Api, server: Any) -> None:
    started = api.start().json()
    url = httpx.URL(started["upload_url"])
    first_chunk_sent, finish = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield PAYLOAD[:1000]
        first_chunk_sent.set()
        assert finish.wait(10)
        yield PAYLOAD[1000:]

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.put, url, content=slow_body(), timeout=30.0)
        assert first_chunk_sent.wait(10)
        deadline = time.time() + 5
        while api.result(started["session_id"]).json()["status"] != "uploading" and time.time() < deadline:
            time.sleep(0.02)
        assert_error(api.put(str(url)), 409, "UPLOAD_IN_PROGRESS", retryable=True)
        finish.set()
        assert slow.result().status_code == 200

    # A client that drops the connection mid-body: the partial file goes, the session is `created` again.
    other = api.start().json()
    target = httpx.URL(other["upload_url"])
    with socket.create_connection((target.host, target.port)) as raw:
        head = (
            f"PUT {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.host}\r\n"
            f"Content-Length: {len(PAYLOAD)}\r\n\r\n"
        )
        raw.sendall(head.encode() + PAYLOAD[:5000])
        deadline = time.time() + 5
        while api.result(other["session_id"]).json()["status"] != "uploading" and time.time() < deadline:
            time.sleep(0.02)
    deadline = time.time() + 5
    while api.result(other["session_id"]).json()["status"] != "created" and time.time() < deadline:
        time.sleep(0.02)
    assert api.result(other["session_id"]).json()["status"] == "created"
    assert not list((server.config.data_dir / "uploads").glob(f"{other['session_id']}*"))
    assert api.put(other["upload_url"]).status_code == 200


def test_unknown_session_with_a_valid_signature_is_404(api: Api, server: Any) -> None:
    from server.secret import SECRET_NAME
    from server.signing import upload_url

    secret = bytes.fromhex((server.config.data_dir / SECRET_NAME).read_text())
    url = upload_url(server.base_url, secret, str(uuid.uuid4()), int(time.time()) + 60)
    assert_error(api.put(url), 404, "SESSION_NOT_FOUND")


# ---- expiry --------------------------------------------------------------------------------------------


def test_expired_sessions_are_410_and_swept(tmp_path: Path) -> None:
    ENGINE.reset()
    with start_embedded(data_dir=tmp_path, infer=ENGINE, session_ttl_s=2, sweep_interval_s=0.1) as srv:
        api = Api(srv.base_url, srv.api_key)
        uploaded = api.uploaded_session()
        never_uploaded = api.start().json()
        blob = tmp_path / "uploads" / f"{uploaded['session_id']}.bin"
        assert blob.exists()
        # Expiry is a whole second: the second session may expire a second after the first.
        last_expiry = max(uploaded["expires_at"], never_uploaded["expires_at"])
        time.sleep(max(0.0, last_expiry - time.time()) + 0.3)
        assert_error(api.complete(uploaded["session_id"]), 410, "SESSION_EXPIRED")
        assert api.result(uploaded["session_id"]).json() == {
            "session_id": uploaded["session_id"],
            "status": "expired",
        }
        assert_error(api.put(never_uploaded["upload_url"]), 403, "FORBIDDEN")
        deadline = time.time() + 5
        while blob.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not blob.exists()
        assert session_rows(tmp_path, uploaded["session_id"])[0][3] == "expired"


# ---- PERSIST_VITALS=true -------------------------------------------------------------------------------


def test_persisted_results_can_be_polled_and_completion_is_idempotent(persist_server: Any) -> None:
    api = Api(persist_server.base_url, persist_server.api_key)
    session = api.uploaded_session()
    session_id = session["session_id"]
    ENGINE.reset("block")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(api.complete, session_id)
        assert ENGINE.entered.wait(10)
        assert api.result(session_id).json() == {"session_id": session_id, "status": "processing"}
        second = pool.submit(api.complete, session_id)  # waits for the running inference, not a new one
        time.sleep(0.2)
        ENGINE.release.set()
        a, b = first.result(), second.result()
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json()
    assert len(ENGINE.calls) == 1
    third = api.complete(session_id)
    assert third.json() == a.json()
    polled = api.result(session_id).json()
    assert polled["status"] == "completed" and polled["vitals"] == GOOD_VITALS
    assert abs(polled["completed_at"] - time.time()) < 10
    assert polled["quality"] == a.json()["quality"]
    assert not (persist_server.config.data_dir / "uploads" / f"{session_id}.bin").exists()


def test_persisted_fallback_polls_as_failed(persist_server: Any) -> None:
    api = Api(persist_server.base_url, persist_server.api_key)
    ENGINE.reset("fail")
    session = api.uploaded_session()
    completed = api.complete(session["session_id"]).json()
    assert completed["status"] == "completed"
    polled = api.result(session["session_id"]).json()
    assert polled["status"] == "failed"
    assert polled["vitals"] == completed["vitals"]
    assert polled["quality"]["reason"] == "NO_FACE"


def test_restart_keeps_keys_upload_urls_and_persisted_results(tmp_path: Path) -> None:
    ENGINE.reset()
    data_dir = tmp_path / "data"
    with start_embedded(persist_vitals=True, data_dir=data_dir, infer=ENGINE) as first:
        key = first.api_key
        api = Api(first.base_url, key)
        done = api.uploaded_session()
        result = api.complete(done["session_id"]).json()
        pending = api.start().json()
    with start_embedded(persist_vitals=True, data_dir=data_dir, infer=ENGINE) as second:
        api = Api(second.base_url, key)
        polled = api.result(done["session_id"])
        assert polled.status_code == 200
        assert polled.json()["vitals"] == result["vitals"]
        assert api.complete(done["session_id"]).json() == result
        # The URL was signed by the first process; the secret in the data dir makes it valid here too.
        url = pending["upload_url"].replace(first.base_url, second.base_url)
        assert api.put(url).status_code == 200
        assert api.complete(pending["session_id"]).status_code == 200
        assert int(polled.headers["X-Usage-Current"]) == 2


# ---- rate limit and quota ------------------------------------------------------------------------------


def test_rate_limit_is_429_retryable_with_retry_after(tmp_path: Path) -> None:
    with start_embedded(data_dir=tmp_path, infer=ENGINE, rate_limit_per_hour=3) as srv:
        api = Api(srv.base_url, srv.api_key)
        remaining = [api.start().headers["X-RateLimit-Remaining"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        limited = api.start()
        assert_error(limited, 429, "RATE_LIMIT_EXCEEDED", retryable=True)
        assert 1 <= int(limited.headers["Retry-After"]) <= 3600
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert limited.headers["X-Usage-Current"] == "3"  # the refused start consumed no scan
        assert_error(api.result(str(uuid.uuid4())), 429, "RATE_LIMIT_EXCEEDED", retryable=True)
        # The limit is per key: another key of the same developer still has its own hour.
        other = Api(srv.base_url, create_key(srv.config.data_dir, "embedded"))
        assert other.start().status_code == 200


def test_quota_is_429_not_retryable_and_only_starts_count(tmp_path: Path) -> None:
    ENGINE.reset()
    with start_embedded(data_dir=tmp_path, infer=ENGINE, monthly_quota=2) as srv:
        api = Api(srv.base_url, srv.api_key)
        first = api.uploaded_session()
        assert api.complete(first["session_id"]).headers["X-Usage-Current"] == "1"
        second = api.start()
        assert (second.headers["X-Usage-Current"], second.headers["X-Usage-Remaining"]) == ("2", "0")
        refused = api.start()
        assert_error(refused, 429, "QUOTA_EXCEEDED", retryable=False)
        assert "Retry-After" not in refused.headers
        assert refused.headers["X-Usage-Current"] == "2"
        # Sessions already started can still finish.
        assert api.put(second.json()["upload_url"]).status_code == 200
        assert api.complete(second.json()["session_id"]).status_code == 200


# ---- concurrency ---------------------------------------------------------------------------------------


def test_fifty_concurrent_sessions_all_succeed_with_exact_counts(tmp_path: Path) -> None:
    ENGINE.reset()
    n_sessions = 50
    with start_embedded(data_dir=tmp_path, infer=ENGINE, inference_workers=2) as srv:
        barrier = threading.Barrier(n_sessions)

        def one_session(_: int) -> dict[str, Any]:
            with httpx.Client(base_url=srv.base_url, headers={"X-API-Key": srv.api_key}, timeout=60) as c:
                barrier.wait()
                started = c.post("/sdk/session/start", json={})
                assert started.status_code == 200, started.text
                put = c.put(started.json()["upload_url"], content=PAYLOAD)
                assert put.status_code == 200, put.text
                done = c.post(
                    "/sdk/session/upload-complete", json={"session_id": started.json()["session_id"]}
                )
                assert done.status_code == 200, done.text
                return done.json()

        with ThreadPoolExecutor(n_sessions) as pool:
            results = list(pool.map(one_session, range(n_sessions)))
        assert len({r["session_id"] for r in results}) == n_sessions
        assert all(r["status"] == "completed" and r["vitals"] == GOOD_VITALS for r in results)
        assert len(ENGINE.calls) == n_sessions
        final = Api(srv.base_url, srv.api_key).result(str(uuid.uuid4()))
        assert final.headers["X-Usage-Current"] == str(n_sessions)
        # 2 authenticated calls per session plus this one; the PUT is signed, not keyed.
        assert final.headers["X-RateLimit-Remaining"] == str(300 - 2 * n_sessions - 1)
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
        assert list((tmp_path / "uploads").iterdir()) == []


# ---- configuration and packaging -----------------------------------------------------------------------


def test_config_from_env_and_overrides(tmp_path: Path) -> None:
    env = {
        "VITALCAM_DATA_DIR": str(tmp_path),
        "PERSIST_VITALS": "true",
        "VITALCAM_RATE_LIMIT_PER_HOUR": "10",
        "VITALCAM_MONTHLY_QUOTA": "20",
        "VITALCAM_SESSION_TTL_S": "60",
        "VITALCAM_MAX_UPLOAD_BYTES": "1000",
        "VITALCAM_PUBLIC_BASE_URL": "https://up.example/",
    }
    config = ServerConfig.from_env(env, monthly_quota=5)
    assert config.data_dir == tmp_path and config.persist_vitals is True
    assert (config.rate_limit_per_hour, config.monthly_quota, config.session_ttl_s) == (10, 5, 60)
    assert config.max_upload_bytes == 1000 and config.public_base_url == "https://up.example"
    defaults = ServerConfig.from_env({}, data_dir=tmp_path)
    assert defaults.persist_vitals is False and defaults.rate_limit_per_hour == 300
    assert (defaults.monthly_quota, defaults.session_ttl_s, defaults.max_upload_bytes) == (
        500,
        1800,
        64 << 20,
    )
    with pytest.raises(ValueError, match="PERSIST_VITALS"):
        ServerConfig.from_env({"PERSIST_VITALS": "maybe"})


def test_public_base_url_is_used_for_upload_urls(tmp_path: Path) -> None:
    with start_embedded(data_dir=tmp_path, public_base_url="https://uploads.example.com/") as srv:
        body = Api(srv.base_url, srv.api_key).start().json()
    assert body["upload_url"].startswith(f"https://uploads.example.com/sdk/upload/{body['session_id']}?")


def test_serve_reads_the_environment_and_the_keys_of_its_data_dir(tmp_path: Path) -> None:
    """`serve()` as `vitalcam serve` runs it: a separate process, configured by environment variables."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = create_key(tmp_path, "acme")
    env = {**os.environ, "VITALCAM_RATE_LIMIT_PER_HOUR": "7", "PERSIST_VITALS": "true"}
    code = f"from server import serve; serve(port={port}, data_dir={str(tmp_path)!r}, log_level='warning')"
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parent.parent)
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
        response = Api(base_url, key).start()
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "7"
        assert response.json()["upload_url"].startswith(f"{base_url}/sdk/upload/")
    finally:
        process.terminate()
        process.wait(10)


def test_server_imports_neither_capture_nor_cv2() -> None:
    code = (
        "import sys, server; import server.app; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('capture', 'cv2', 'mediapipe')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
