"""Transport against a real HTTP server: the whole workflow, and every error code → its exception.

The backend is the reference server (or, before it existed, the spec stand-in in tests/fault_proxy.py)
on 127.0.0.1; canned answers for codes the server cannot be made to produce on demand come from the
fault proxy in front of it, so every response still crosses a real socket.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fault_proxy import Backend, FaultProxy, backend
from tests.tensors import make_payload
from transport import (
    ApiKeyInvalid,
    Conflict,
    Demographics,
    FallbackConfig,
    Forbidden,
    InvalidRequest,
    NetworkError,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimit,
    RateLimitExceeded,
    Result,
    ResultNotPersisted,
    RetryNotice,
    RetryPolicy,
    ServerError,
    SessionClient,
    SessionExpired,
    SessionNotFound,
    UnexpectedResponse,
    UploadUrlExpired,
    Usage,
    VitalcamError,
)

FAST = RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05, total_s=10, jitter_s=0.01)


@pytest.fixture(scope="module")
def server() -> Iterator[Backend]:
    with backend(persist_vitals=False) as b:
        yield b


@pytest.fixture(scope="module")
def payload() -> bytes:
    """20 s of traces with a 72 bpm pulse: long enough for the engine (15 s usable) to measure it."""
    return make_payload(duration_s=20.0, hr_bpm=72.0)


@pytest.fixture
def client(proxy: FaultProxy, server: Backend) -> Iterator[SessionClient]:
    with SessionClient(proxy.url, server.api_key, retry=FAST, timeout_s=10, poll_interval_s=0.05) as c:
        yield c


def test_measure_runs_the_whole_workflow(client: SessionClient, proxy: FaultProxy, payload: bytes) -> None:
    seen: list[tuple[int, int]] = []
    result = client.measure(
        payload, Demographics(age=35, sex="M", fitzpatrick=3), progress=lambda s, t: seen.append((s, t))
    )

    assert result.status == "completed"
    assert result.vitals is not None and result.vitals.heart_rate is not None
    assert not result.is_fallback and result.vitals.confidence >= 0.5  # measured, not drawn
    assert abs(result.vitals.heart_rate - 72.0) <= 3.0
    assert isinstance(result.rate_limit, RateLimit) and result.rate_limit.limit > 0
    assert isinstance(result.usage, Usage) and result.usage.limit > 0
    assert result.raw["session_id"] == result.session_id
    assert seen[0] == (0, len(payload)) and seen[-1] == (len(payload), len(payload))
    assert [r.method for r in proxy.requests] == ["POST", "PUT", "POST"]
    put = proxy.requests[1]
    assert put.headers["Content-Type"] == "video/webm"
    assert put.body_len == len(payload)
    assert "X-API-Key" not in put.headers  # the key never goes to the (possibly third-party) upload host
    assert proxy.requests[0].headers["X-API-Key"] == client.api_key


def test_a_payload_too_short_to_measure_comes_back_as_flagged_fallback(client: SessionClient) -> None:
    """8 s is under the engine's 15 s minimum: the server answers fallback vitals, which must say so."""
    result = client.measure(make_payload(duration_s=8.0))
    assert result.status == "completed" and result.vitals is not None
    assert result.is_fallback and result.vitals.is_fallback and result.vitals.confidence == 0.0


def test_check_passes_with_one_get_and_a_good_key(client: SessionClient, proxy: FaultProxy) -> None:
    client.check()
    assert [(r.method, r.path.rsplit("/", 1)[0]) for r in proxy.requests] == [("GET", "/sdk/session/result")]
    assert proxy.requests[0].headers["X-API-Key"] == client.api_key


def test_check_refuses_a_bad_key_at_once(proxy: FaultProxy) -> None:
    with SessionClient(proxy.url, "ck_test_wrong", retry=FAST) as bad, pytest.raises(ApiKeyInvalid):
        bad.check()
    assert len(proxy.requests) == 1  # no retry: only a new key helps


def test_check_names_the_server_nothing_answers_at() -> None:
    notices: list[RetryNotice] = []
    with (
        closed_port() as port,
        SessionClient(f"http://127.0.0.1:{port}", "ck_test_x", retry=FAST, on_retry=notices.append) as c,
        pytest.raises(NetworkError) as info,
    ):
        c.check()
    assert notices == []  # no retries: the person is told before sitting still
    assert info.value.message == f"no answer from http://127.0.0.1:{port}: connection refused"


def test_check_refuses_a_url_that_is_no_sessions_api(client: SessionClient, proxy: FaultProxy) -> None:
    proxy.plan("GET", "/sdk/session/result/", ("respond", 404, "<h1>Not Found</h1>", {}))
    with pytest.raises(UnexpectedResponse):
        client.check()


def test_steps_one_by_one_and_upload_from_file(client: SessionClient, payload: bytes, tmp_path: Path) -> None:
    path = tmp_path / "tensor.bin"
    path.write_bytes(payload)
    session = client.start()
    assert session.session_id and session.upload_url
    assert session.rate_limit is not None and session.usage is not None
    assert session.fallback_config.ranges["heart_rate"].min > 0
    client.upload(session, path)
    result = client.complete(session)
    assert result.session_id == session.session_id and result.status == "completed"


def test_second_put_to_a_used_upload_url_says_start_a_new_session(
    client: SessionClient, payload: bytes
) -> None:
    session = client.start()
    client.upload(session, payload)
    with pytest.raises(UploadUrlExpired) as info:
        client.upload(session, payload)
    assert isinstance(info.value, SessionExpired)
    assert info.value.status == 403 and "start a new session" in str(info.value)


def test_invalid_tensor_is_invalid_request_and_not_retried(
    client: SessionClient, proxy: FaultProxy, payload: bytes
) -> None:
    broken = payload[:-100]
    with pytest.raises(InvalidRequest) as info:
        client.measure(broken)
    assert info.value.status == 400 and not info.value.retryable
    # The server may reject at the PUT or at upload-complete; either way exactly one attempt of that step.
    assert proxy.count("PUT") == 1
    assert proxy.count("POST", "/sdk/session/upload-complete") <= 1


def test_bad_api_key_is_api_key_invalid_at_once(proxy: FaultProxy, server: Backend) -> None:
    with SessionClient(proxy.url, "ck_test_wrong", retry=FAST) as bad, pytest.raises(ApiKeyInvalid) as info:
        bad.start()
    assert info.value.status == 401 and info.value.code == "API_KEY_INVALID"
    assert proxy.count("POST") == 1


def test_unknown_session_is_session_not_found(client: SessionClient) -> None:
    with pytest.raises(SessionNotFound) as info:
        client.result("00000000-0000-0000-0000-000000000000")
    assert info.value.status == 404 and not isinstance(info.value, ResultNotPersisted)


def test_non_persisting_server_explains_why_polling_cannot_work(
    client: SessionClient, payload: bytes
) -> None:
    session = client.start()
    client.upload(session, payload)
    client.complete(session)
    with pytest.raises(ResultNotPersisted) as info:
        client.wait_result(session, poll_interval_s=0.01, timeout_s=2)
    assert "PERSIST_VITALS" in str(info.value)


def test_persisting_server_serves_results_by_polling(payload: bytes) -> None:
    with backend(persist_vitals=True) as b, SessionClient(b.base_url, b.api_key, retry=FAST) as c:
        session = c.start()
        c.upload(session, payload)
        done = c.complete(session)
        polled = c.wait_result(session.session_id, poll_interval_s=0.05, timeout_s=5)
        # The server reports "failed" when inference fell back to population ranges (confidence 0.0).
        assert polled.status in ("completed", "failed") and polled.session_id == done.session_id
        assert polled.is_fallback == (polled.status == "failed")
        assert polled.vitals == done.vitals


ERROR_CASES = [
    (400, "INVALID_REQUEST", InvalidRequest, False),
    (401, "API_KEY_INVALID", ApiKeyInvalid, False),
    (403, "FORBIDDEN", Forbidden, False),
    (404, "SESSION_NOT_FOUND", SessionNotFound, False),
    (429, "RATE_LIMIT_EXCEEDED", RateLimitExceeded, True),
    (429, "QUOTA_EXCEEDED", QuotaExceeded, False),
    (410, "SESSION_EXPIRED", SessionExpired, False),
    (413, "PAYLOAD_TOO_LARGE", PayloadTooLarge, False),
    (409, "UPLOAD_IN_PROGRESS", Conflict, True),
    (500, "INTERNAL_ERROR", ServerError, True),
    (503, "SERVICE_UNAVAILABLE", ServerError, True),
]


@pytest.mark.parametrize(("status", "code", "cls", "retryable"), ERROR_CASES)
def test_every_error_code_maps_to_its_exception(
    proxy: FaultProxy, server: Backend, status: int, code: str, cls: type[VitalcamError], retryable: bool
) -> None:
    body = {"error": code, "message": f"canned {code}", "retryable": retryable}
    proxy.plan("POST", "/sdk/session/start", ("respond", status, body, {"X-Request-Id": "req-123"}))
    with (
        SessionClient(proxy.url, server.api_key, retry=RetryPolicy.no_retry()) as c,
        pytest.raises(cls) as info,
    ):
        c.start()
    err = info.value
    assert type(err) is cls
    assert (err.status, err.code, err.message, err.retryable) == (status, code, f"canned {code}", retryable)
    assert err.request_id == "req-123"


def test_a_code_the_shared_table_calls_permanent_is_not_retried(proxy: FaultProxy, server: Backend) -> None:
    """SERVER_MISCONFIGURED (contract/errors.py: 500, not retryable) without a `retryable` in the body."""
    body = {"error": "SERVER_MISCONFIGURED", "message": "no public base URL"}
    proxy.plan("POST", "/sdk/session/start", *[("respond", 500, body, {})] * 4)
    with SessionClient(proxy.url, server.api_key, retry=FAST) as c, pytest.raises(ServerError) as info:
        c.start()
    assert not info.value.retryable and proxy.count("POST", "/sdk/session/start") == 1


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (502, "<html><body>Bad Gateway</body></html>", ServerError),
        (500, b"", ServerError),
        (401, "<h1>nope</h1>", ApiKeyInvalid),
        (404, "<h1>Not Found</h1>", UnexpectedResponse),  # a wrong base URL, not a missing session
        (418, {"unexpected": "shape"}, UnexpectedResponse),
        (200, "<html>captive portal</html>", UnexpectedResponse),
        (200, {"session_id": 5}, UnexpectedResponse),
        (200, b"\xff\xfe not json", UnexpectedResponse),
    ],
)
def test_undocumented_bodies_still_give_typed_errors(
    proxy: FaultProxy, server: Backend, status: int, body: object, cls: type[VitalcamError]
) -> None:
    proxy.plan("POST", "/sdk/session/start", ("respond", status, body, {}))
    with (
        SessionClient(proxy.url, server.api_key, retry=RetryPolicy.no_retry()) as c,
        pytest.raises(cls) as info,
    ):
        c.start()
    assert info.value.status == status
    assert info.value.request_id  # the id we sent, when the server gave none
    assert str(info.value)


def test_complete_answer_without_vitals_is_unexpected(client: SessionClient, proxy: FaultProxy) -> None:
    proxy.plan(
        "POST",
        "/sdk/session/upload-complete",
        ("respond", 200, {"session_id": "x", "status": "completed"}, {}),
    )
    with pytest.raises(UnexpectedResponse, match="without a vitals object"):
        client.complete("x")


def test_network_error_when_nothing_listens() -> None:
    with (
        closed_port() as port,
        SessionClient(f"http://127.0.0.1:{port}", "ck_test_x", retry=FAST) as c,
        pytest.raises(NetworkError) as info,
    ):
        c.start()
    assert info.value.retryable and info.value.status is None and not info.value.maybe_processed


def test_fallback_vitals_are_flagged(client: SessionClient, proxy: FaultProxy) -> None:
    vitals = {"heart_rate": 70, "respiratory_rate": 15, "hrv": 40, "spo2": 97, "systolic_bp": 120}
    body = {
        "session_id": "s",
        "status": "completed",
        "vitals": {**vitals, "diastolic_bp": 70, "confidence": 0.0},
    }
    proxy.plan("POST", "/sdk/session/upload-complete", ("respond", 200, body, {}))
    result = client.complete("s")
    assert result.is_fallback and result.vitals is not None and result.vitals.is_fallback


def test_client_side_fallback_is_explicit_and_marked() -> None:
    config = FallbackConfig.from_json(
        {
            "heart_rate": {"min": 62, "max": 98},
            "systolic_bp": {"min": 109, "max": 134},
            "diastolic_bp_offset": {"min": 51, "max": 66},
            "confidence": 0.5,  # even a server claiming otherwise cannot make drawn values look measured
        }
    )
    vitals = config.draw(random.Random(1))
    assert vitals.is_fallback and vitals.confidence == 0.0
    assert vitals.heart_rate is not None and 62 <= vitals.heart_rate <= 98
    assert vitals.systolic_bp is not None and vitals.diastolic_bp is not None
    assert 51 <= vitals.systolic_bp - vitals.diastolic_bp <= 66
    assert vitals.spo2 is None  # no range, no value


def test_result_roundtrips_and_demographics_validate() -> None:
    result = Result.from_json({"session_id": "s", "status": "processing"})
    assert not result.is_terminal and result.vitals is None
    assert Demographics(age=40, sex="F").to_json() == {"age": 40, "sex": "F"}
    with pytest.raises(ValueError, match="sex"):
        Demographics(sex="male")  # type: ignore[arg-type]


def test_transport_is_pluggable() -> None:
    """httpx-style split: any transport works, here an in-memory one answering a 401."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "API_KEY_INVALID", "message": "no", "retryable": False})

    with (
        SessionClient("http://api.test", "k", transport=httpx.MockTransport(handler)) as c,
        pytest.raises(ApiKeyInvalid),
    ):
        c.start()


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port with nothing listening on it (bound, never listened, so connects are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
