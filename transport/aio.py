"""The asyncio session client: the same workflow and rules as `SessionClient`, on `httpx.AsyncClient`.

Method for method a mirror of transport/client.py (the shared decisions live in transport/_common.py);
keep the two in step. Pass `transport=` an `httpx.AsyncBaseTransport` to swap the I/O layer.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import httpx

from transport._common import (
    COMPLETE_PATH,
    MAX_RESPONSE_BYTES,
    NOT_STARTED_STATUSES,
    RESPONSE_ERRORS,
    RESULT_PATH,
    START_PATH,
    BodyReader,
    Deadline,
    Payload,
    PayloadSource,
    Progress,
    api_headers,
    check_upload,
    complete_should_retry,
    json_body,
    not_persisted,
    start_body,
    terminal_or_raise,
    unexpected_failure,
    unusable_answer,
    upload_headers,
    upload_landed_status,
    user_agent,
)
from transport._deadline import enforce_deadlines, measure_deadline, measure_time_left_s, request_deadline
from transport.errors import (
    DeadlineExceeded,
    NetworkError,
    ResultNotPersisted,
    ResultTimeout,
    SessionExpired,
    SessionNotFound,
    UploadUrlExpired,
    VitalcamError,
)
from transport.models import Demographics, Result, StartedSession
from transport.outbox import Outbox
from transport.retry import RetryPolicy, acall_with_retry


class AsyncSessionClient:
    """Async twin of `SessionClient`; use `async with`, or `await close()`.

    Talks to any server speaking the sessions API (our reference backend or a hosted one).

    Deadlines are for the whole request, from connecting to the last byte of the answer: `timeout_s` for
    ordinary requests, `upload_timeout_s` for the PUT of the tensor, `processing_timeout_s` for
    upload-complete, which returns only after inference (the spec's example took 74 s). When that wait
    fails after the request was sent, `measure()` polls the result endpoint every `poll_interval_s` for up
    to `poll_timeout_s`. `measure_timeout_s` bounds a whole `measure()`, retries included; answers larger
    than `max_response_bytes` are refused.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        processing_timeout_s: float = 180.0,
        poll_interval_s: float = 2.0,
        poll_timeout_s: float = 120.0,
        upload_timeout_s: float = 300.0,
        measure_timeout_s: float = 600.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.processing_timeout_s = processing_timeout_s
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.measure_timeout_s = measure_timeout_s
        self.max_response_bytes = max_response_bytes
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"User-Agent": user_agent()},
        )
        enforce_deadlines(self._http)

    def __repr__(self) -> str:
        return f"AsyncSessionClient({self.base_url!r})"

    async def __aenter__(self) -> AsyncSessionClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- the four API steps ---------------------------------------------------------------------------

    async def start(self, demographics: Demographics | None = None) -> StartedSession:
        """POST /sdk/session/start. Retried on transient errors: an unused extra session is harmless."""

        async def attempt() -> StartedSession:
            response = await self._send("POST", START_PATH, self.timeout_s, json=start_body(demographics))
            return StartedSession.from_response(response, json_body(response, "session start"))

        return await acall_with_retry(self.retry, attempt)

    async def upload(
        self, session: StartedSession, payload: Payload, progress: Progress | None = None
    ) -> None:
        """PUT the tensor to the session's upload URL, streamed, reporting (bytes sent, total) to `progress`.

        Retried on transient errors (a retry restarts from byte 0). The URL accepts one PUT, so if a retry
        after a lost response gets 403, the session's status decides whether the first PUT landed. A real
        403 raises UploadUrlExpired: start a new session.
        """
        source = PayloadSource.of(payload)
        state = {"maybe_landed": False}

        async def attempt() -> None:
            try:
                response = await self._send(
                    "PUT",
                    session.upload_url,
                    self.upload_timeout_s,
                    content=source.achunks(progress),
                    headers=upload_headers(source.size),
                    api=False,
                )
                check_upload(response)
            except NetworkError as exc:
                state["maybe_landed"] = state["maybe_landed"] or exc.maybe_processed
                raise
            except UploadUrlExpired:
                if state["maybe_landed"] and await self._upload_landed(session.session_id):
                    return
                raise

        await acall_with_retry(self.retry, attempt)

    async def complete(self, session: StartedSession | str) -> Result:
        """POST /sdk/session/upload-complete: runs inference and returns the result.

        Retried only while the server surely did not receive it; if the request was sent and the answer
        lost, this raises NetworkError with `maybe_processed=True` (`measure()` then polls instead). An
        answer about any other session than this one is an UnexpectedResponse.
        """
        session_id = _session_id(session)

        async def attempt() -> Result:
            response = await self._send(
                "POST",
                COMPLETE_PATH,
                self.processing_timeout_s,
                json={"session_id": session_id},
                timeout=httpx.Timeout(self.timeout_s, read=self.processing_timeout_s),
            )
            body = json_body(response, "upload-complete")
            return Result.from_response(response, body, "upload-complete", session_id)

        return await acall_with_retry(self.retry, attempt, complete_should_retry)

    async def result(self, session_id: str) -> Result:
        """GET /sdk/session/result/{id} once (with retries): works only on servers with PERSIST_VITALS=true."""
        return await acall_with_retry(self.retry, lambda: self._get_result(session_id))

    async def wait_result(
        self, session_id: StartedSession | str, poll_interval_s: float = 2.0, timeout_s: float = 120.0
    ) -> Result:
        """Poll the result every `poll_interval_s` until completed or failed.

        Raises SessionExpired when the session expired, ResultTimeout when still processing at `timeout_s`,
        and ResultNotPersisted when the session is known to have existed (a StartedSession was passed, or
        an earlier poll saw it) but is now gone, i.e. the server does not persist results.
        """
        return await self._poll(session_id, poll_interval_s, timeout_s, resend_complete=False)

    # -- the whole workflow ---------------------------------------------------------------------------

    async def measure(
        self,
        payload: Payload,
        demographics: Demographics | None = None,
        *,
        progress: Progress | None = None,
        outbox: Outbox | None = None,
    ) -> Result:
        """Start, upload, complete (falling back to polling) and return the result.

        If the session or its upload URL expires, or the result was lost on a non-persisting server, the
        workflow runs once more with a fresh session. All of it ends within `measure_timeout_s`
        (DeadlineExceeded otherwise). If it cannot finish and an `outbox` is given, the payload is saved
        there (unless the server rejected the payload itself) and the error is re-raised with
        `.outbox_path` set, for a later `retry_outbox()`. Every failure is a VitalcamError.
        """
        with measure_deadline(self.measure_timeout_s):
            try:
                try:
                    return await self._measure_once(payload, demographics, progress)
                except (SessionExpired, ResultNotPersisted):
                    return await self._measure_once(payload, demographics, progress)
            except VitalcamError as exc:
                error = exc
            except Exception as exc:  # a bug or an answer no rule foresaw: still keep the measurement
                error = unexpected_failure(exc)
        if outbox is not None and error.replayable:
            item = outbox.save(payload, api_url=self.base_url, demographics=demographics, error=error)
            error.outbox_path = item.payload_path
        raise error

    async def _measure_once(
        self, payload: Payload, demographics: Demographics | None, progress: Progress | None
    ) -> Result:
        session = await self.start(demographics)
        await self.upload(session, payload, progress)
        try:
            return await self.complete(session)
        except NetworkError as exc:
            if not exc.maybe_processed:
                raise
        return await self._poll(session, self.poll_interval_s, self.poll_timeout_s, resend_complete=True)

    # -- internals ------------------------------------------------------------------------------------

    async def _send(
        self, method: str, url: str, timeout_s: float, *, api: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One HTTP exchange, over within `timeout_s` (and the measurement's deadline), its answer read
        in full but never beyond `max_response_bytes`. Transport failures become NetworkError, unusable
        answers UnexpectedResponse. The API key goes only to API calls."""
        headers = {**(api_headers(self.api_key) if api else {}), **kwargs.pop("headers", {})}
        deadline = Deadline.within(timeout_s)
        deadline.check_not_passed(method, url)
        try:
            request = self._http.build_request(method, url, headers=headers, **kwargs)
        except RESPONSE_ERRORS as exc:
            raise unusable_answer(exc, method, url) from exc
        try:
            with request_deadline(deadline.at_s):
                response = await self._http.send(request, stream=True)
                try:
                    reader = BodyReader(response, self.max_response_bytes, deadline)
                    async for chunk in response.aiter_bytes():
                        if not reader.add(chunk):
                            break
                finally:
                    await response.aclose()
        except httpx.TransportError as exc:
            raise deadline.transport_error(exc, request) from exc
        except RESPONSE_ERRORS as exc:
            raise unusable_answer(exc, method, request.url, request.headers.get("x-request-id")) from exc
        return reader.finish()

    async def _get_result(self, session_id: str, timeout_s: float | None = None) -> Result:
        path = RESULT_PATH.format(session_id=session_id)
        response = await self._send("GET", path, self.timeout_s if timeout_s is None else timeout_s)
        return Result.from_response(response, json_body(response, "result"), "result", session_id)

    async def _upload_landed(self, session_id: str) -> bool:
        try:
            return upload_landed_status((await self._get_result(session_id)).status)
        except VitalcamError:
            return False

    async def _poll(
        self, session: StartedSession | str, interval_s: float, timeout_s: float, *, resend_complete: bool
    ) -> Result:
        session_id = _session_id(session)
        existed = isinstance(session, StartedSession)
        deadline = time.monotonic() + timeout_s
        last_error: VitalcamError | None = None
        while True:
            try:
                left_s = max(0.001, deadline - time.monotonic())
                result = await self._get_result(session_id, min(self.timeout_s, left_s))
            except SessionNotFound as exc:
                if existed:
                    raise not_persisted(session_id) from exc
                raise
            except DeadlineExceeded:
                raise
            except VitalcamError as exc:
                if not exc.retryable:
                    raise
                last_error = exc
            else:
                existed = True
                if (done := terminal_or_raise(result)) is not None:
                    return done
                if resend_complete and result.status in NOT_STARTED_STATUSES:
                    # Our upload-complete never arrived; sending it again is safe and the only way forward.
                    resend_complete = False
                    try:
                        return await self.complete(session_id)
                    except NetworkError as exc:
                        if not exc.maybe_processed:
                            raise
            remaining = deadline - time.monotonic()
            if measure_time_left_s() <= 0:
                raise DeadlineExceeded(
                    f"the measurement's deadline passed while polling session {session_id}"
                )
            if remaining <= 0:
                raise ResultTimeout(
                    f"session {session_id} had no result after {timeout_s:g} s of polling"
                    + (f" (last error: {last_error})" if last_error else ""),
                )
            await asyncio.sleep(max(0.0, min(interval_s, remaining, measure_time_left_s())))


def _session_id(session: StartedSession | str) -> str:
    return session.session_id if isinstance(session, StartedSession) else session


__all__ = ["AsyncSessionClient"]
