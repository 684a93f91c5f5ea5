"""`BaseSessionClient`: the session workflow written once, as flows of steps, for both clients.

Like httpx's `BaseClient`, this class holds the configuration and every decision and does no I/O: each
API step and the whole `measure()` are generators of `Send`/`Sleep` steps (transport/_flow.py).
`SessionClient` drives them with blocking calls, `AsyncSessionClient` with awaits; neither contains a
rule of its own. Disk I/O that both share (keeping a failed payload in the outbox) is a plain method.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, TypedDict

import httpx

from transport._common import (
    COMPLETE_PATH,
    MAX_RESPONSE_BYTES,
    NOT_STARTED_STATUSES,
    RESPONSE_ERRORS,
    RESULT_PATH,
    START_PATH,
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
)
from transport._deadline import request_deadline
from transport._flow import Flow, OnRetry, Send, Sleep, exchange, retrying, short_reason, time_left_s
from transport.errors import (
    DeadlineExceeded,
    Forbidden,
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
from transport.retry import RetryPolicy

# The result of this session id is asked for by `check()`: the nil UUID, which no server hands out, so the
# answer is SESSION_NOT_FOUND when the key is good, without creating a session or spending quota.
PROBE_SESSION_ID = "00000000-0000-0000-0000-000000000000"


class ClientOptions(TypedDict, total=False):
    """The keyword arguments both clients take besides `transport=` (defaults on BaseSessionClient)."""

    timeout_s: float
    retry: RetryPolicy | None
    processing_timeout_s: float
    poll_interval_s: float
    poll_timeout_s: float
    upload_timeout_s: float
    measure_timeout_s: float
    max_response_bytes: int
    on_retry: OnRetry | None


class BaseSessionClient:
    """Configuration and workflow shared by `SessionClient` and `AsyncSessionClient`.

    Deadlines are for the whole request, from connecting to the last byte of the answer: `timeout_s` for
    ordinary requests, `upload_timeout_s` for the PUT of the tensor, `processing_timeout_s` for
    upload-complete, which returns only after inference (the spec's example took 74 s). When that wait
    fails after the request was sent, `measure()` polls the result endpoint every `poll_interval_s` for up
    to `poll_timeout_s`. `measure_timeout_s` bounds a whole `measure()`, retries included; answers larger
    than `max_response_bytes` are refused. `on_retry` is called with a `RetryNotice` before each wait for
    a retry, for a display such as "retrying (2/4) in 1.3 s: connection refused".
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        processing_timeout_s: float = 180.0,
        poll_interval_s: float = 2.0,
        poll_timeout_s: float = 120.0,
        upload_timeout_s: float = 300.0,
        measure_timeout_s: float = 600.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        on_retry: OnRetry | None = None,
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
        self.on_retry = on_retry

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- what the drivers share ----------------------------------------------------------------------

    def _build_request(
        self, http: httpx.Client | httpx.AsyncClient, step: Send, content: Any
    ) -> httpx.Request:
        """The httpx request for a step; `content` is the driver's (sync or async) chunk iterator."""
        step.deadline.check_not_passed(step.method, step.url)
        headers = api_headers(self.api_key) if step.api else {}
        kwargs: dict[str, Any] = {}
        if step.json is not None:
            kwargs["json"] = step.json
        if step.upload is not None:
            headers.update(upload_headers(step.upload.size))
            kwargs["content"] = content
        if step.read_timeout_s is not None:
            kwargs["timeout"] = httpx.Timeout(self.timeout_s, read=step.read_timeout_s)
        try:
            return http.build_request(step.method, step.url, headers=headers, **kwargs)
        except RESPONSE_ERRORS as exc:
            raise unusable_answer(exc, step.method, step.url) from exc

    @contextlib.contextmanager
    def _exchanging(self, step: Send, request: httpx.Request) -> Iterator[None]:
        """Around one exchange: every socket operation ends by the step's deadline, and any failure
        leaves as a typed error (NetworkError for the transport, UnexpectedResponse for an unusable answer)."""
        try:
            with request_deadline(step.deadline.at_s):
                yield
        except httpx.TransportError as exc:
            raise step.deadline.transport_error(exc, request) from exc
        except RESPONSE_ERRORS as exc:
            raise unusable_answer(exc, step.method, request.url, request.headers.get("x-request-id")) from exc

    def _before_sleep(self, step: Sleep) -> None:
        if step.notice is not None and self.on_retry is not None:
            self.on_retry(step.notice)

    def _keep(
        self,
        error: VitalcamError,
        payload: Payload,
        demographics: Demographics | None,
        outbox: Outbox | None,
    ) -> VitalcamError:
        """Save a payload `measure()` could not deliver (unless the server rejected it); `error` says where."""
        if outbox is not None and error.replayable:
            item = outbox.save(payload, api_url=self.base_url, demographics=demographics, error=error)
            error.outbox_path = item.payload_path
        return error

    # -- the four API steps, as flows ----------------------------------------------------------------

    def _send_step(
        self, method: str, url: str, timeout_s: float, ends_at_s: float | None, **fields: Any
    ) -> Send:
        return Send(method, url, Deadline.within(timeout_s, ends_at_s), **fields)

    def _start_flow(
        self, demographics: Demographics | None, ends_at_s: float | None = None
    ) -> Flow[StartedSession]:
        def attempt() -> Flow[StartedSession]:
            step = self._send_step(
                "POST", START_PATH, self.timeout_s, ends_at_s, json=start_body(demographics)
            )
            response = yield from exchange(step)
            return StartedSession.from_response(response, json_body(response, "session start"))

        return (yield from retrying(self.retry, attempt, ends_at_s=ends_at_s))

    def _upload_flow(
        self,
        session: StartedSession,
        payload: Payload,
        progress: Progress | None,
        ends_at_s: float | None = None,
    ) -> Flow[None]:
        source = PayloadSource.of(payload)
        maybe_landed = False

        def attempt() -> Flow[None]:
            nonlocal maybe_landed
            step = self._send_step(
                "PUT",
                session.upload_url,
                self.upload_timeout_s,
                ends_at_s,
                api=False,
                upload=source,
                progress=progress,
            )
            try:
                check_upload((yield from exchange(step)))
            except NetworkError as exc:
                maybe_landed = maybe_landed or exc.maybe_processed
                raise
            except UploadUrlExpired:
                if maybe_landed and (yield from self._upload_landed_flow(session.session_id, ends_at_s)):
                    return
                raise

        yield from retrying(self.retry, attempt, ends_at_s=ends_at_s)

    def _complete_flow(self, session: StartedSession | str, ends_at_s: float | None = None) -> Flow[Result]:
        session_id = _session_id(session)

        def attempt() -> Flow[Result]:
            step = self._send_step(
                "POST",
                COMPLETE_PATH,
                self.processing_timeout_s,
                ends_at_s,
                json={"session_id": session_id},
                read_timeout_s=self.processing_timeout_s,
            )
            response = yield from exchange(step)
            body = json_body(response, "upload-complete")
            return Result.from_response(response, body, "upload-complete", session_id)

        return (
            yield from retrying(self.retry, attempt, ends_at_s=ends_at_s, should_retry=complete_should_retry)
        )

    def _result_flow(self, session_id: str) -> Flow[Result]:
        return (yield from retrying(self.retry, lambda: self._get_result_flow(session_id)))

    def _get_result_flow(
        self, session_id: str, timeout_s: float | None = None, ends_at_s: float | None = None
    ) -> Flow[Result]:
        path = RESULT_PATH.format(session_id=session_id)
        step = self._send_step("GET", path, self.timeout_s if timeout_s is None else timeout_s, ends_at_s)
        response = yield from exchange(step)
        return Result.from_response(response, json_body(response, "result"), "result", session_id)

    def _upload_landed_flow(self, session_id: str, ends_at_s: float | None) -> Flow[bool]:
        """After a lost PUT answer and a 403 on the retry: whether the session shows the first PUT arrived."""
        try:
            result = yield from self._get_result_flow(session_id, ends_at_s=ends_at_s)
        except VitalcamError:
            return False
        return upload_landed_status(result.status)

    def _poll_flow(
        self,
        session: StartedSession | str,
        interval_s: float,
        timeout_s: float,
        *,
        resend_complete: bool,
        ends_at_s: float | None = None,
    ) -> Flow[Result]:
        """Poll until completed or failed; resend upload-complete once if the session shows it never arrived."""
        session_id = _session_id(session)
        existed = isinstance(session, StartedSession)
        deadline = time.monotonic() + timeout_s
        last_error: VitalcamError | None = None
        while True:
            try:
                left_s = max(0.001, deadline - time.monotonic())
                result = yield from self._get_result_flow(session_id, min(self.timeout_s, left_s), ends_at_s)
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
                        return (yield from self._complete_flow(session_id, ends_at_s))
                    except NetworkError as exc:
                        if not exc.maybe_processed:
                            raise
            remaining = deadline - time.monotonic()
            measure_left_s = time_left_s(ends_at_s)
            if measure_left_s <= 0:
                raise DeadlineExceeded(
                    f"the measurement's deadline passed while polling session {session_id}"
                )
            if remaining <= 0:
                raise ResultTimeout(
                    f"session {session_id} had no result after {timeout_s:g} s of polling"
                    + (f" (last error: {last_error})" if last_error else ""),
                )
            yield Sleep(max(0.0, min(interval_s, remaining, measure_left_s)))

    # -- the whole workflow ---------------------------------------------------------------------------

    def _measure_flow(
        self, payload: Payload, demographics: Demographics | None, progress: Progress | None
    ) -> Flow[Result]:
        """Start, upload, complete (falling back to polling), within `measure_timeout_s`.

        A fresh session is tried once more when the first expired or its result was lost on a
        non-persisting server. Every failure leaves as a VitalcamError, whatever raised it.
        """
        ends_at_s = time.monotonic() + self.measure_timeout_s
        try:
            try:
                return (yield from self._measure_once_flow(payload, demographics, progress, ends_at_s))
            except (SessionExpired, ResultNotPersisted):
                return (yield from self._measure_once_flow(payload, demographics, progress, ends_at_s))
        except VitalcamError:
            raise
        except Exception as exc:  # a bug or an answer no rule foresaw: still a typed error (and the outbox)
            raise unexpected_failure(exc) from exc

    def _measure_once_flow(
        self,
        payload: Payload,
        demographics: Demographics | None,
        progress: Progress | None,
        ends_at_s: float,
    ) -> Flow[Result]:
        session = yield from self._start_flow(demographics, ends_at_s)
        yield from self._upload_flow(session, payload, progress, ends_at_s)
        try:
            return (yield from self._complete_flow(session, ends_at_s))
        except NetworkError as exc:
            if not exc.maybe_processed:
                raise
        return (
            yield from self._poll_flow(
                session, self.poll_interval_s, self.poll_timeout_s, resend_complete=True, ends_at_s=ends_at_s
            )
        )

    def _check_flow(self, timeout_s: float) -> Flow[None]:
        """One authenticated GET, no retry: the server answers and accepts the key, or the typed error."""
        try:
            yield from self._get_result_flow(PROBE_SESSION_ID, min(timeout_s, self.timeout_s))
        except (SessionNotFound, Forbidden):
            return  # the key passed authentication and the server looked for the session: all is well
        except NetworkError as exc:  # said about the server, not about the probe's made-up session id
            raise NetworkError(
                f"no answer from {self.base_url}: {short_reason(exc)}", request_id=exc.request_id
            ) from exc


def _session_id(session: StartedSession | str) -> str:
    return session.session_id if isinstance(session, StartedSession) else session


__all__ = ["PROBE_SESSION_ID", "BaseSessionClient", "ClientOptions"]
