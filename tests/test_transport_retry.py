"""Retries and the polling fallback under injected faults, with the number of attempts asserted.

Faults come from tests/fault_proxy.py between the client and the reference server: dropped connections
(before and after the server saw the request), delays past the client's timeout, 503s, 429 with
Retry-After. Policies use millisecond backoffs so the whole file runs in a few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from contract.tensor import Measurement
from server.inference import InferenceResult
from tests.fault_proxy import Backend, FaultProxy, backend
from tests.tensors import make_payload
from transport import (
    NetworkError,
    QuotaExceeded,
    RateLimitExceeded,
    ResultNotPersisted,
    RetryPolicy,
    ServerError,
    SessionClient,
)

FAST = RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05, total_s=10, jitter_s=0.01)
START, UPLOAD, COMPLETE, RESULT = (
    "/sdk/session/start",
    "/sdk/upload/",
    "/sdk/session/upload-complete",
    "/sdk/session/result/",
)
UNAVAILABLE = ("respond", 503, {"error": "UNAVAILABLE", "message": "restarting", "retryable": True}, {})
VITALS = {"heart_rate": 71.0, "respiratory_rate": 15.0, "hrv": 41.0, "spo2": 98.0, "systolic_bp": 121.0}


def slow_infer(_: Measurement, __: Mapping[str, Any] | None) -> InferenceResult:
    """Inference that outlasts the client's processing timeout, so upload-complete times out."""
    time.sleep(0.8)
    return InferenceResult.from_vitals({**VITALS, "diastolic_bp": 79.0, "confidence": 0.8}, {})


@pytest.fixture(scope="module")
def payload() -> bytes:
    return make_payload(duration_s=8.0)


@pytest.fixture(scope="module", params=[False, True], ids=["no-persist", "persist"])
def server(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with backend(persist_vitals=request.param, infer=slow_infer) as b:
        b.persist = request.param  # type: ignore[attr-defined]
        yield b


def make_client(proxy: FaultProxy, server: Backend, **kwargs: Any) -> SessionClient:
    options: dict[str, Any] = {"retry": FAST, "timeout_s": 5, "poll_interval_s": 0.05, "poll_timeout_s": 10}
    return SessionClient(proxy.url, server.api_key, **(options | kwargs))


def test_503_then_200_is_retried(proxy: FaultProxy, server: Backend) -> None:
    proxy.plan("POST", START, UNAVAILABLE, UNAVAILABLE)
    with make_client(proxy, server) as c:
        assert c.start().session_id
    assert proxy.count("POST", START) == 3


def test_persistent_503_gives_up_after_the_policy_attempts(proxy: FaultProxy, server: Backend) -> None:
    proxy.plan("POST", START, *[UNAVAILABLE] * 10)
    with make_client(proxy, server) as c, pytest.raises(ServerError) as info:
        c.start()
    assert info.value.status == 503 and info.value.retryable
    assert proxy.count("POST", START) == 4


def test_total_time_budget_stops_retries_early(proxy: FaultProxy, server: Backend) -> None:
    proxy.plan("POST", START, *[UNAVAILABLE] * 20)
    policy = RetryPolicy(attempts=20, initial_s=0.1, max_s=0.1, total_s=0.35, jitter_s=0.0)
    began = time.monotonic()
    with make_client(proxy, server, retry=policy) as c, pytest.raises(ServerError):
        c.start()
    assert time.monotonic() - began < 1.0
    assert 2 <= proxy.count("POST", START) <= 4  # never a sleep that would cross total_s


def test_429_rate_limit_honours_retry_after(proxy: FaultProxy, server: Backend) -> None:
    limited = ("respond", 429, {"error": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retryable": True})
    proxy.plan("POST", START, (*limited, {"Retry-After": "1"}))
    began = time.monotonic()
    with make_client(proxy, server) as c:
        c.start()
    assert time.monotonic() - began >= 0.95  # waited the server's Retry-After, not the 10 ms backoff
    assert proxy.count("POST", START) == 2


def test_429_with_retry_after_beyond_the_policy_fails_at_once(proxy: FaultProxy, server: Backend) -> None:
    limited = ("respond", 429, {"error": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retryable": True})
    proxy.plan("POST", START, (*limited, {"Retry-After": "3600"}))
    with make_client(proxy, server) as c, pytest.raises(RateLimitExceeded) as info:
        c.start()
    assert info.value.retry_after_s == 3600
    assert proxy.count("POST", START) == 1


def test_quota_exceeded_is_not_retried(proxy: FaultProxy, server: Backend) -> None:
    quota = ("respond", 429, {"error": "QUOTA_EXCEEDED", "message": "monthly quota", "retryable": False}, {})
    proxy.plan("POST", START, quota, quota)
    with make_client(proxy, server) as c, pytest.raises(QuotaExceeded):
        c.start()
    assert proxy.count("POST", START) == 1


def test_dropped_connections_are_retried(proxy: FaultProxy, server: Backend) -> None:
    proxy.plan("POST", START, ("drop_before",), ("drop_before",))
    with make_client(proxy, server) as c:
        c.start()
    assert proxy.count("POST", START) == 3


def test_network_errors_exhaust_into_network_error(proxy: FaultProxy, server: Backend) -> None:
    proxy.plan("POST", START, *[("drop_before",)] * 4)
    with make_client(proxy, server) as c, pytest.raises(NetworkError) as info:
        c.start()
    assert info.value.maybe_processed  # the whole request was sent before the drop
    assert proxy.count("POST", START) == 4


def test_upload_retried_after_a_drop_restarts_from_byte_zero(
    proxy: FaultProxy, server: Backend, payload: bytes
) -> None:
    proxy.plan("PUT", UPLOAD, ("drop_before",))
    progress: list[int] = []
    with make_client(proxy, server) as c:
        session = c.start()
        c.upload(session, payload, progress=lambda sent, _: progress.append(sent))
    assert proxy.count("PUT", UPLOAD) == 2
    assert progress.count(0) == 2 and progress[-1] == len(payload)


def test_upload_whose_response_was_lost_is_not_sent_twice_in_vain(
    proxy: FaultProxy, server: Backend, payload: bytes
) -> None:
    """The server stored the PUT but the answer was lost; the retry's 403 'already used' is checked."""
    proxy.plan("PUT", UPLOAD, ("drop_after",))
    with make_client(proxy, server) as c:
        session = c.start()
        c.upload(session, payload)
        result = c.complete(session)
    assert result.status == "completed" and not result.is_fallback
    assert proxy.count("PUT", UPLOAD) == 2 and proxy.count("GET", RESULT) == 1


def test_complete_timeout_falls_back_to_polling(proxy: FaultProxy, server: Backend, payload: bytes) -> None:
    """Inference outlasts the processing timeout: a persisting server answers the poll; one that does not
    persist deletes the result with the lost response, which the client explains (ResultNotPersisted)."""
    with make_client(proxy, server, processing_timeout_s=0.3) as c:
        if server.persist:  # type: ignore[attr-defined]
            result = c.measure(payload)
            assert result.status == "completed" and result.vitals is not None
            assert result.vitals.heart_rate == 71.0
            # One session, one upload-complete, then polls until the result appeared.
            assert (proxy.count("POST", START), proxy.count("POST", COMPLETE)) == (1, 1)
            assert proxy.count("GET", RESULT) >= 2
        else:
            with pytest.raises(ResultNotPersisted, match="PERSIST_VITALS"):
                c.measure(payload)
            # measure() tried once more with a fresh session, which timed out the same way.
            assert (proxy.count("POST", START), proxy.count("POST", COMPLETE)) == (2, 2)


def test_complete_that_never_arrived_is_sent_again(
    proxy: FaultProxy, server: Backend, payload: bytes
) -> None:
    """The connection dropped before the server saw upload-complete: polling shows 'uploading', so resend."""
    proxy.plan("POST", COMPLETE, ("drop_before",))
    with make_client(proxy, server) as c:
        result = c.measure(payload)
    assert result.status == "completed"
    assert (proxy.count("POST", START), proxy.count("POST", COMPLETE), proxy.count("GET", RESULT)) == (
        1,
        2,
        1,
    )


def test_lost_complete_response(proxy: FaultProxy, server: Backend, payload: bytes) -> None:
    """The server answered upload-complete but the answer was lost on the way back."""
    proxy.plan("POST", COMPLETE, ("drop_after",))
    with make_client(proxy, server) as c:
        result = c.measure(payload)
    assert result.status == "completed" and result.vitals is not None
    if server.persist:  # type: ignore[attr-defined]
        assert (proxy.count("POST", START), proxy.count("GET", RESULT)) == (1, 1)
    else:
        # Gone with PERSIST_VITALS=false: ResultNotPersisted, then one fresh session recovers it.
        assert (proxy.count("POST", START), proxy.count("POST", COMPLETE)) == (2, 2)


def test_the_workflow_runs_without_io_step_by_step() -> None:
    """The flows are plain generators: driven here by hand with answers built in the test, no socket."""
    import httpx

    from transport._base import BaseSessionClient
    from transport._flow import Send, Sleep

    client = BaseSessionClient("http://api.test", "ck_test_k", retry=FAST)
    flow = client._start_flow(None)
    first = next(flow)
    assert isinstance(first, Send) and (first.method, first.url, first.api) == ("POST", START, True)
    request = httpx.Request("POST", "http://api.test" + START)
    wait = flow.send(httpx.Response(503, json=UNAVAILABLE[2], request=request))
    assert isinstance(wait, Sleep) and wait.notice is not None
    assert str(wait.notice).startswith("retrying (2/4) in ") and wait.seconds <= FAST.max_s
    again = flow.send(None)
    assert isinstance(again, Send) and again.url == START
    body = {"session_id": "s-1", "expires_at": 1, "upload_url": "http://api.test/up", "fallback_config": {}}
    with pytest.raises(StopIteration) as done:
        flow.send(httpx.Response(200, json=body, request=request))
    assert done.value.value.session_id == "s-1"
