"""AsyncSessionClient does what SessionClient does: same requests, same retries, same errors, same outbox.

Each scenario runs the sync client and the async client against the same reference server and fault
script, and compares the request sequences the proxy saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault_proxy import Backend, FaultProxy, backend
from tests.tensors import make_payload
from transport import (
    ApiKeyInvalid,
    AsyncSessionClient,
    Outbox,
    Result,
    ResultNotPersisted,
    RetryPolicy,
    ServerError,
    SessionClient,
    UploadUrlExpired,
    aretry_outbox,
)

FAST = RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05, total_s=10, jitter_s=0.01)
START, COMPLETE = "/sdk/session/start", "/sdk/session/upload-complete"
UNAVAILABLE = ("respond", 503, {"error": "UNAVAILABLE", "message": "down", "retryable": True}, {})
OPTIONS: dict[str, Any] = {"retry": FAST, "timeout_s": 5, "poll_interval_s": 0.05, "poll_timeout_s": 5}


@pytest.fixture(scope="module")
def server() -> Iterator[Backend]:
    with backend() as b:
        yield b


@pytest.fixture(scope="module")
def payload() -> bytes:
    """20 s at 72 bpm: long enough that the engine measures it, so both clients' vitals can be compared."""
    return make_payload(duration_s=20.0, seed=5)


def both(
    proxy: FaultProxy,
    server: Backend,
    faults: list[tuple[str, str, tuple[Any, ...]]],
    scenario: Callable[[Any], Any],
) -> list[tuple[Any, list[tuple[str, str]]]]:
    """Run `scenario(client)` with the sync and then the async client; return outcome and request log."""
    runs = []
    for is_async in (False, True):
        proxy.reset()
        for method, path, fault in faults:
            proxy.plan(method, path, fault)
        try:
            if is_async:

                async def run() -> Any:
                    async with AsyncSessionClient(proxy.url, server.api_key, **OPTIONS) as c:
                        return await scenario(c)

                outcome: Any = asyncio.run(run())
            else:
                with SessionClient(proxy.url, server.api_key, **OPTIONS) as c:
                    outcome = scenario(c)
        except Exception as exc:
            outcome = exc
        log = [(r.method, r.path.split("?")[0].rsplit("/", 1)[0]) for r in proxy.requests]
        runs.append((outcome, log))
    return runs


def test_whole_workflow_matches(proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path) -> None:
    path = tmp_path / "t.bin"
    path.write_bytes(payload)
    seen: list[list[int]] = [[], []]

    def scenario(c: Any) -> Any:
        slot = seen[isinstance(c, AsyncSessionClient)]
        return c.measure(path, progress=lambda sent, _: slot.append(sent))

    (sync_result, sync_log), (async_result, async_log) = both(proxy, server, [], scenario)
    assert isinstance(sync_result, Result) and isinstance(async_result, Result)
    assert sync_result.status == async_result.status == "completed"
    assert not sync_result.is_fallback and not async_result.is_fallback  # measured, not random draws
    assert sync_result.vitals == async_result.vitals  # same tensor, same engine, same numbers
    assert (
        sync_log == async_log == [("POST", "/sdk/session"), ("PUT", "/sdk/upload"), ("POST", "/sdk/session")]
    )
    assert seen[0] == seen[1] and seen[0][-1] == len(payload)


def test_retries_match(proxy: FaultProxy, server: Backend) -> None:
    faults = [("POST", START, UNAVAILABLE), ("POST", START, ("drop_before",))]
    (s, s_log), (a, a_log) = both(proxy, server, faults, lambda c: c.start())
    assert s.session_id and a.session_id
    assert len(s_log) == len(a_log) == 3


def test_exhausted_retries_raise_the_same_error(proxy: FaultProxy, server: Backend) -> None:
    faults = [("POST", START, UNAVAILABLE)] * 6
    (s, s_log), (a, a_log) = both(proxy, server, faults, lambda c: c.start())
    assert isinstance(s, ServerError) and isinstance(a, ServerError)
    assert len(s_log) == len(a_log) == 4


def test_retry_notices_match(proxy: FaultProxy, server: Backend) -> None:
    """Both clients tell `on_retry` the same retries: attempt, policy limit and the cause in a few words."""
    heard: list[list[str]] = [[], []]

    def scenario(c: Any) -> Any:
        c.on_retry = lambda notice: heard[isinstance(c, AsyncSessionClient)].append(str(notice))
        return c.start()

    both(proxy, server, [("POST", START, UNAVAILABLE), ("POST", START, ("drop_before",))], scenario)
    for notices in heard:
        assert [n.split(" in ")[0] for n in notices] == ["retrying (2/4)", "retrying (3/4)"]
        assert notices[0].endswith(": HTTP 503 UNAVAILABLE")
        assert notices[1].endswith(": server disconnected without sending a response")


def test_check_matches(proxy: FaultProxy, server: Backend) -> None:
    (s, s_log), (a, a_log) = both(proxy, server, [], lambda c: c.check())
    assert s is None and a is None and s_log == a_log == [("GET", "/sdk/session/result")]
    bad = ("respond", 401, {"error": "API_KEY_INVALID", "message": "bad key", "retryable": False}, {})
    (s, _), (a, _) = both(proxy, server, [("GET", "/sdk/session/result/", bad)], lambda c: c.check())
    assert isinstance(s, ApiKeyInvalid) and isinstance(a, ApiKeyInvalid)


def test_errors_match(proxy: FaultProxy, server: Backend, payload: bytes) -> None:
    def reused_url(c: Any) -> Any:
        if isinstance(c, AsyncSessionClient):

            async def go() -> None:
                session = await c.start()
                await c.upload(session, payload)
                await c.upload(session, payload)

            return go()
        session = c.start()
        c.upload(session, payload)
        return c.upload(session, payload)

    (s, _), (a, _) = both(proxy, server, [], reused_url)
    assert isinstance(s, UploadUrlExpired) and isinstance(a, UploadUrlExpired)
    assert (s.status, s.code) == (a.status, a.code)

    bad = ("respond", 401, {"error": "API_KEY_INVALID", "message": "bad key", "retryable": False}, {})
    (s, s_log), (a, a_log) = both(proxy, server, [("POST", START, bad)], lambda c: c.start())
    assert isinstance(s, ApiKeyInvalid) and isinstance(a, ApiKeyInvalid) and len(s_log) == len(a_log) == 1


def test_lost_complete_recovery_matches(proxy: FaultProxy, server: Backend, payload: bytes) -> None:
    """Answer lost on a non-persisting server: ResultNotPersisted, then one fresh session, in both clients."""
    (s, s_log), (a, a_log) = both(
        proxy, server, [("POST", COMPLETE, ("drop_after",))], lambda c: c.measure(payload)
    )
    assert isinstance(s, Result) and isinstance(a, Result)
    assert s_log == a_log and s_log.count(("POST", "/sdk/session")) == 4  # 2 starts, 2 completes
    assert s_log.count(("GET", "/sdk/session/result")) == 1


def test_polling_explanation_matches(proxy: FaultProxy, server: Backend, payload: bytes) -> None:
    def scenario(c: Any) -> Any:
        if isinstance(c, AsyncSessionClient):

            async def go() -> Result:
                session = await c.start()
                await c.upload(session, payload)
                await c.complete(session)
                return await c.wait_result(session, poll_interval_s=0.01, timeout_s=2)

            return go()
        session = c.start()
        c.upload(session, payload)
        c.complete(session)
        return c.wait_result(session, poll_interval_s=0.01, timeout_s=2)

    (s, _), (a, _) = both(proxy, server, [], scenario)
    assert isinstance(s, ResultNotPersisted) and isinstance(a, ResultNotPersisted)
    assert str(s).replace(s.message, "") == str(a).replace(a.message, "")
    assert s.message.split("existed", 1)[1] == a.message.split("existed", 1)[1]


def test_async_outbox_replay(proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    proxy.plan("POST", COMPLETE, *[UNAVAILABLE] * 4)

    async def go() -> None:
        async with AsyncSessionClient(proxy.url, server.api_key, **OPTIONS) as c:
            with pytest.raises(ServerError) as info:
                await c.measure(payload, outbox=outbox)
            assert info.value.outbox_path is not None
            [(_, outcome)] = await aretry_outbox(c, outbox)
            assert isinstance(outcome, Result) and outcome.status == "completed"

    asyncio.run(go())
    assert outbox.pending() == [] and len(list(outbox.results_dir.iterdir())) == 1
