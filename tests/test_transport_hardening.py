"""Issue 12, client side: a client that never hangs and never loses a measurement.

Each hostile answer crosses a real socket: the fault proxy (tests/fault_proxy.py, raw sockets) sits in
front of the reference server and trickles answers one byte at a time, sends answers of hundreds of MiB,
nests JSON 100000 levels deep, sends `inf` where a number belongs, or answers for another session.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault_proxy import Backend, FaultProxy, backend
from tests.tensors import make_payload
from transport import (
    AsyncSessionClient,
    DeadlineExceeded,
    NetworkError,
    Outbox,
    RateLimitExceeded,
    RetryPolicy,
    ServerError,
    SessionClient,
    UnexpectedResponse,
    VitalcamError,
    aretry_outbox,
    retry_outbox,
)

pytestmark = pytest.mark.timeout(90)

START, COMPLETE, RESULT = "/sdk/session/start", "/sdk/session/upload-complete", "/sdk/session/result/"
ONCE = RetryPolicy.no_retry()
FAST = RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05, total_s=30, jitter_s=0.01)
MiB = 1024 * 1024
START_BODY = {
    "session_id": "0b6f3c8e-5d0a-4d7e-9a55-2f1c8f7f2b1e",
    "expires_at": 1712001800,
    "upload_url": "http://127.0.0.1:9/sdk/upload/x?expires=1&signature=0",
    "fallback_config": {},
}
VITALS = {
    "heart_rate": 72,
    "respiratory_rate": 16,
    "hrv": 45.2,
    "spo2": 98.1,
    "systolic_bp": 122,
    "diastolic_bp": 78,
    "confidence": 0.87,
}
NESTED = b"[" * 100_000 + b"]" * 100_000  # 200 KB: under the size cap, far over any recursion limit


@pytest.fixture(scope="module")
def server() -> Iterator[Backend]:
    with backend() as b:
        yield b


@pytest.fixture(scope="module")
def payload() -> bytes:
    return make_payload(duration_s=8.0, seed=11)


def client(proxy: FaultProxy, server: Backend, **options: Any) -> SessionClient:
    settings: dict[str, Any] = {"retry": ONCE, "timeout_s": 5, "poll_interval_s": 0.05, "poll_timeout_s": 5}
    return SessionClient(proxy.url, server.api_key, **{**settings, **options})


def aclient(proxy: FaultProxy, server: Backend, **options: Any) -> AsyncSessionClient:
    settings: dict[str, Any] = {"retry": ONCE, "timeout_s": 5, "poll_interval_s": 0.05, "poll_timeout_s": 5}
    return AsyncSessionClient(proxy.url, server.api_key, **{**settings, **options})


# ---- 8. deadlines: whole requests and whole measurements --------------------------------------------------


@pytest.mark.parametrize("kind", ["trickle", "trickle_body"])
def test_start_ends_at_its_deadline_when_the_answer_trickles(
    proxy: FaultProxy, server: Backend, kind: str
) -> None:
    """Two bytes a second, each within httpx's read timeout: before, start() ran for minutes."""
    proxy.plan("POST", START, (kind, 200, START_BODY, {}, 0.5))
    started_s = time.monotonic()
    with client(proxy, server, timeout_s=1.0) as c, pytest.raises(NetworkError) as info:
        c.start()
    elapsed_s = time.monotonic() - started_s
    assert elapsed_s < 3 * 1.0
    assert "deadline of 1 s" in str(info.value)
    assert not isinstance(info.value, DeadlineExceeded)  # the request's own deadline, not measure()'s


def test_async_start_ends_at_its_deadline_when_the_answer_trickles(
    proxy: FaultProxy, server: Backend
) -> None:
    proxy.plan("POST", START, ("trickle", 200, START_BODY, {}, 0.5))

    async def run() -> None:
        async with aclient(proxy, server, timeout_s=1.0) as c:
            await c.start()

    started_s = time.monotonic()
    with pytest.raises(NetworkError, match="deadline of 1 s"):
        asyncio.run(run())
    assert time.monotonic() - started_s < 3 * 1.0


def test_complete_ends_at_processing_timeout_when_the_answer_trickles(
    proxy: FaultProxy, server: Backend, payload: bytes
) -> None:
    body = {"session_id": "x", "status": "completed", "vitals": VITALS}
    with client(proxy, server, processing_timeout_s=1.0) as c:
        session = c.start()
        c.upload(session, payload)
        proxy.plan("POST", COMPLETE, ("trickle_body", 200, body, {}, 0.5))
        started_s = time.monotonic()
        with pytest.raises(NetworkError) as info:
            c.complete(session)
    assert time.monotonic() - started_s < 3 * 1.0
    assert info.value.maybe_processed  # the request was sent: measure() polls rather than repeats it


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_measure_ends_at_its_deadline_and_keeps_the_measurement(
    proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path, is_async: bool
) -> None:
    """Every step on its own would take its time; the whole measure() still ends at measure_timeout_s."""
    body = {"session_id": "x", "status": "completed", "vitals": VITALS}
    proxy.plan("POST", COMPLETE, ("trickle", 200, body, {}, 0.5), ("trickle", 200, body, {}, 0.5))
    proxy.plan("GET", RESULT, *[("trickle", 200, body, {}, 0.5)] * 20)
    outbox = Outbox(tmp_path / "outbox")
    options = {"retry": FAST, "processing_timeout_s": 60, "poll_timeout_s": 60, "measure_timeout_s": 2.0}
    started_s = time.monotonic()
    if is_async:

        async def run() -> None:
            async with aclient(proxy, server, **options) as c:
                await c.measure(payload, outbox=outbox)

        with pytest.raises(DeadlineExceeded) as info:
            asyncio.run(run())
    else:
        with client(proxy, server, **options) as c, pytest.raises(DeadlineExceeded) as info:
            c.measure(payload, outbox=outbox)
    assert time.monotonic() - started_s < 3 * 2.0
    assert info.value.outbox_path is not None and info.value.outbox_path.read_bytes() == payload
    assert [item.payload_path for item in outbox.pending()] == [info.value.outbox_path]


def test_retries_stop_at_the_measure_deadline(proxy: FaultProxy, server: Backend, payload: bytes) -> None:
    proxy.plan("POST", START, *[("trickle", 200, START_BODY, {}, 0.5)] * 10)
    started_s = time.monotonic()
    with (
        client(proxy, server, retry=FAST, timeout_s=1.0, measure_timeout_s=2.5) as c,
        pytest.raises(NetworkError),
    ):
        c.measure(payload)
    assert time.monotonic() - started_s < 3 * 2.5
    assert proxy.count("POST", START) <= 3


# ---- 9. malformed answers are typed errors, and the outbox keeps the measurement ---------------------------


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (200, NESTED, UnexpectedResponse),
        (500, NESTED, ServerError),
        (200, b'{"session_id": "s", "upload_url": ' + b"[" * 5000 + b"]" * 5000 + b"}", UnexpectedResponse),
        (200, b"[" + b"1" + b"0" * 5000 + b"]", UnexpectedResponse),  # over json's 4300-digit limit
        (200, {**START_BODY, "upload_url": "ftp://storage.example/x"}, UnexpectedResponse),
        (200, {**START_BODY, "upload_url": "http://[::1"}, UnexpectedResponse),
    ],
)
def test_malformed_start_answers_are_typed_errors(
    proxy: FaultProxy, server: Backend, status: int, body: Any, cls: type[VitalcamError]
) -> None:
    proxy.plan("POST", START, ("respond", status, body, {"Content-Type": "application/json"}))
    with client(proxy, server) as c, pytest.raises(cls):
        c.start()


def test_an_expiry_too_large_for_a_float_is_dropped(proxy: FaultProxy, server: Backend) -> None:
    text = json.dumps({**START_BODY, "expires_at": 0}).replace(
        '"expires_at": 0', '"expires_at": 1' + "0" * 4000
    )
    proxy.plan("POST", START, ("respond", 200, text.encode(), {"Content-Type": "application/json"}))
    with client(proxy, server) as c:
        session = c.start()
    assert session.expires_at is None and session.session_id == START_BODY["session_id"]


def test_an_undecodable_body_is_a_typed_error(proxy: FaultProxy, server: Backend) -> None:
    proxy.plan("POST", START, ("respond", 200, b"this is not gzip", {"Content-Encoding": "gzip"}))
    with client(proxy, server) as c, pytest.raises(UnexpectedResponse, match="DecodingError"):
        c.start()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_nested_complete_answer_keeps_the_measurement(
    proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path, is_async: bool
) -> None:
    proxy.plan("POST", COMPLETE, ("respond", 200, NESTED, {"Content-Type": "application/json"}))
    outbox = Outbox(tmp_path / "outbox")
    if is_async:

        async def run() -> None:
            async with aclient(proxy, server) as c:
                await c.measure(payload, outbox=outbox)

        with pytest.raises(UnexpectedResponse) as info:
            asyncio.run(run())
    else:
        with client(proxy, server) as c, pytest.raises(UnexpectedResponse) as info:
            c.measure(payload, outbox=outbox)
    assert info.value.outbox_path is not None and info.value.outbox_path.read_bytes() == payload


ABSURD_HEADERS = {
    "X-RateLimit-Limit": "inf",
    "X-RateLimit-Remaining": "nan",
    "X-RateLimit-Reset": "1" + "0" * 400,
    "X-Usage-Current": "1e999",
    "X-Usage-Limit": "-inf",
    "X-Usage-Remaining": "12abc",
}


def test_absurd_limit_headers_are_ignored_not_fatal(
    proxy: FaultProxy, server: Backend, payload: bytes
) -> None:
    proxy.plan("POST", START, ("pass_headers", ABSURD_HEADERS))
    proxy.plan("POST", COMPLETE, ("pass_headers", ABSURD_HEADERS))
    with client(proxy, server) as c:
        result = c.measure(payload)
    assert result.status == "completed"
    assert result.rate_limit is None and result.usage is None


@pytest.mark.parametrize("retry_after", ["inf", "nan", "1e999", "Mon, 01 Jan 99999 00:00:00 GMT", "-5"])
def test_absurd_retry_after_is_still_a_rate_limit_error(
    proxy: FaultProxy, server: Backend, retry_after: str
) -> None:
    body = {"error": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retryable": True}
    proxy.plan("POST", START, ("respond", 429, body, {"Retry-After": retry_after}))
    with client(proxy, server) as c, pytest.raises(RateLimitExceeded):
        c.start()


def test_huge_numbers_in_an_answer_are_dropped_not_fatal(proxy: FaultProxy, server: Backend) -> None:
    huge = "1" + "0" * 4000  # within json's 4300-digit limit, far beyond a float
    text = json.dumps({"session_id": "s", "status": "completed", "vitals": {**VITALS, "heart_rate": 0}})
    text = text.replace('"heart_rate": 0', f'"heart_rate": {huge}').replace(
        "}}", f'}}, "processing_time_ms": {huge}}}'
    )
    proxy.plan("POST", COMPLETE, ("respond", 200, text.encode(), {"Content-Type": "application/json"}))
    with client(proxy, server) as c:
        result = c.complete("s")
    assert result.vitals is not None and result.vitals.heart_rate is None
    assert result.processing_time_ms is None and result.vitals.confidence == pytest.approx(0.87)


def test_retry_outbox_goes_on_past_an_item_it_cannot_read(
    proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    broken = outbox.save(b"placeholder")
    broken.payload_path.unlink()
    broken.payload_path.mkdir()  # a payload that cannot be read as a file
    good = outbox.save(payload)
    with client(proxy, server) as c:
        outcomes = {item.id: outcome for item, outcome in retry_outbox(c, outbox)}
    assert isinstance(outcomes[broken.id], VitalcamError)
    assert outcomes[good.id].status == "completed"  # type: ignore[union-attr]
    assert [item.id for item in outbox.pending()] == [broken.id]
    assert outbox.pending()[0].attempts == 1


def test_async_retry_outbox_goes_on_past_an_item_it_cannot_read(
    proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    broken = outbox.save(b"placeholder")
    broken.payload_path.unlink()
    broken.payload_path.mkdir()
    good = outbox.save(payload)

    async def run() -> list[Any]:
        async with aclient(proxy, server) as c:
            return await aretry_outbox(c, outbox)

    outcomes = {item.id: outcome for item, outcome in asyncio.run(run())}
    assert isinstance(outcomes[broken.id], VitalcamError)
    assert outcomes[good.id].status == "completed"
    assert [item.id for item in outbox.pending()] == [broken.id]


# ---- 10. an answer about another session is not this session's result --------------------------------------


def test_a_complete_answer_for_another_session_is_refused(
    proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path
) -> None:
    other = {"session_id": "11111111-2222-4333-8444-555555555555", "status": "completed", "vitals": VITALS}
    proxy.plan("POST", COMPLETE, ("respond", 200, other, {}))
    outbox = Outbox(tmp_path / "outbox")
    with client(proxy, server) as c, pytest.raises(UnexpectedResponse, match="another session") as info:
        c.measure(payload, outbox=outbox)
    assert info.value.outbox_path is not None


def test_a_polled_result_for_another_session_is_refused(proxy: FaultProxy, server: Backend) -> None:
    other = {"session_id": "11111111-2222-4333-8444-555555555555", "status": "completed", "vitals": VITALS}
    proxy.plan("GET", RESULT, ("respond", 200, other, {}))
    with client(proxy, server) as c, pytest.raises(UnexpectedResponse, match="another session"):
        c.result("0b6f3c8e-5d0a-4d7e-9a55-2f1c8f7f2b1e")


# ---- 11. answers are never buffered whole ------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cls"), [(200, UnexpectedResponse), (502, ServerError)])
def test_a_huge_answer_is_refused_after_the_cap_not_buffered(
    proxy: FaultProxy, server: Backend, status: int, cls: type[VitalcamError]
) -> None:
    """A 256 MiB start answer: the client stops reading at its 1 MiB cap (before: it read all of it)."""
    proxy.plan("POST", START, ("respond_huge", status, 256 * MiB, {}))
    with client(proxy, server) as c, pytest.raises(cls) as info:
        c.start()
    assert info.value.status == status
    deadline = time.monotonic() + 5
    while proxy.requests[-1].sent_bytes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the proxy records what it sent once the client has hung up
    time.sleep(0.2)
    assert proxy.requests[-1].sent_bytes < 32 * MiB  # the cap plus socket buffers, not 256 MiB


# ---- 12. the outbox is readable by its user only -----------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outbox_directories_are_0700_and_files_0600(
    proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path
) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)  # as an older version (or the umask) left it
    outbox = Outbox(directory)
    item = outbox.save(payload, api_url="http://x", error=VitalcamError("down"))
    assert mode(directory) == 0o700
    assert mode(item.payload_path) == 0o600 and mode(item.sidecar_path) == 0o600
    outbox.record_failure(item, VitalcamError("still down"))
    assert mode(item.sidecar_path) == 0o600
    with client(proxy, server) as c:
        (outcome,) = retry_outbox(c, outbox)
    result_path = outbox.result_path(outcome[0])
    assert mode(outbox.results_dir) == 0o700 and mode(result_path) == 0o600
    fresh = Outbox(tmp_path / "new" / "outbox")
    fresh.save(b"x")
    assert mode(fresh.directory) == 0o700
