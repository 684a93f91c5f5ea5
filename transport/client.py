"""The synchronous session client: start → upload → upload-complete (→ poll), with retries and an outbox.

Like httpx itself, the client is split from its transport: pass `transport=` (an `httpx.BaseTransport`,
e.g. `httpx.MockTransport` or one with proxies/certificates) and the client logic stays unchanged.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import httpx

from transport._common import (
    COMPLETE_PATH,
    NOT_STARTED_STATUSES,
    RESULT_PATH,
    START_PATH,
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
    upload_headers,
    upload_landed_status,
    user_agent,
)
from transport.errors import (
    NetworkError,
    ResultNotPersisted,
    ResultTimeout,
    SessionExpired,
    SessionNotFound,
    UploadUrlExpired,
    VitalcamError,
    error_from_transport,
)
from transport.models import Demographics, Result, StartedSession
from transport.outbox import Outbox
from transport.retry import RetryPolicy, call_with_retry


class SessionClient:
    """Talks to any server speaking the sessions API (our reference backend or a hosted one).

    `timeout_s` bounds each ordinary request; `processing_timeout_s` bounds the wait for upload-complete,
    which returns only after inference (the spec's example took 74 s). When that wait fails after the
    request was sent, `measure()` polls the result endpoint every `poll_interval_s` for up to
    `poll_timeout_s`. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        processing_timeout_s: float = 180.0,
        poll_interval_s: float = 2.0,
        poll_timeout_s: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.processing_timeout_s = processing_timeout_s
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"User-Agent": user_agent()},
        )

    def __repr__(self) -> str:
        return f"SessionClient({self.base_url!r})"

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the four API steps ---------------------------------------------------------------------------

    def start(self, demographics: Demographics | None = None) -> StartedSession:
        """POST /sdk/session/start. Retried on transient errors: an unused extra session is harmless."""

        def attempt() -> StartedSession:
            response = self._send("POST", START_PATH, json=start_body(demographics))
            return StartedSession.from_response(response, json_body(response, "session start"))

        return call_with_retry(self.retry, attempt)

    def upload(self, session: StartedSession, payload: Payload, progress: Progress | None = None) -> None:
        """PUT the tensor to the session's upload URL, streamed, reporting (bytes sent, total) to `progress`.

        Retried on transient errors (a retry restarts from byte 0). The URL accepts one PUT, so if a retry
        after a lost response gets 403, the session's status decides whether the first PUT landed. A real
        403 raises UploadUrlExpired: start a new session.
        """
        source = PayloadSource.of(payload)
        state = {"maybe_landed": False}

        def attempt() -> None:
            try:
                response = self._send(
                    "PUT",
                    session.upload_url,
                    content=source.chunks(progress),
                    headers=upload_headers(source.size),
                    api=False,
                )
                check_upload(response)
            except NetworkError as exc:
                state["maybe_landed"] = state["maybe_landed"] or exc.maybe_processed
                raise
            except UploadUrlExpired:
                if state["maybe_landed"] and self._upload_landed(session.session_id):
                    return
                raise

        call_with_retry(self.retry, attempt)

    def complete(self, session: StartedSession | str) -> Result:
        """POST /sdk/session/upload-complete: runs inference and returns the result.

        Retried only while the server surely did not receive it; if the request was sent and the answer
        lost, this raises NetworkError with `maybe_processed=True` (`measure()` then polls instead).
        """
        session_id = _session_id(session)

        def attempt() -> Result:
            response = self._send(
                "POST",
                COMPLETE_PATH,
                json={"session_id": session_id},
                timeout=httpx.Timeout(self.timeout_s, read=self.processing_timeout_s),
            )
            return Result.from_response(response, json_body(response, "upload-complete"), "upload-complete")

        return call_with_retry(self.retry, attempt, complete_should_retry)

    def result(self, session_id: str) -> Result:
        """GET /sdk/session/result/{id} once (with retries): works only on servers with PERSIST_VITALS=true."""
        return call_with_retry(self.retry, lambda: self._get_result(session_id))

    def wait_result(
        self, session_id: StartedSession | str, poll_interval_s: float = 2.0, timeout_s: float = 120.0
    ) -> Result:
        """Poll the result every `poll_interval_s` until completed or failed.

        Raises SessionExpired when the session expired, ResultTimeout when still processing at `timeout_s`,
        and ResultNotPersisted when the session is known to have existed (a StartedSession was passed, or
        an earlier poll saw it) but is now gone, i.e. the server does not persist results.
        """
        return self._poll(session_id, poll_interval_s, timeout_s, resend_complete=False)

    # -- the whole workflow ---------------------------------------------------------------------------

    def measure(
        self,
        payload: Payload,
        demographics: Demographics | None = None,
        *,
        progress: Progress | None = None,
        outbox: Outbox | None = None,
    ) -> Result:
        """Start, upload, complete (falling back to polling) and return the result.

        If the session or its upload URL expires, or the result was lost on a non-persisting server, the
        workflow runs once more with a fresh session. If it still cannot finish and an `outbox` is given,
        the payload is saved there (unless the server rejected the payload itself) and the error is
        re-raised with `.outbox_path` set, for a later `retry_outbox()`.
        """
        try:
            try:
                return self._measure_once(payload, demographics, progress)
            except (SessionExpired, ResultNotPersisted):
                return self._measure_once(payload, demographics, progress)
        except VitalcamError as exc:
            if outbox is not None and exc.replayable:
                item = outbox.save(payload, api_url=self.base_url, demographics=demographics, error=exc)
                exc.outbox_path = item.payload_path
            raise

    def _measure_once(
        self, payload: Payload, demographics: Demographics | None, progress: Progress | None
    ) -> Result:
        session = self.start(demographics)
        self.upload(session, payload, progress)
        try:
            return self.complete(session)
        except NetworkError as exc:
            if not exc.maybe_processed:
                raise
        return self._poll(session, self.poll_interval_s, self.poll_timeout_s, resend_complete=True)

    # -- internals ------------------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, api: bool = True, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange; transport failures become NetworkError. The API key goes only to API calls."""
        headers = {**(api_headers(self.api_key) if api else {}), **kwargs.pop("headers", {})}
        try:
            return self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise error_from_transport(exc) from exc

    def _get_result(self, session_id: str) -> Result:
        response = self._send("GET", RESULT_PATH.format(session_id=session_id))
        return Result.from_response(response, json_body(response, "result"), "result")

    def _upload_landed(self, session_id: str) -> bool:
        try:
            return upload_landed_status(self._get_result(session_id).status)
        except VitalcamError:
            return False

    def _poll(
        self, session: StartedSession | str, interval_s: float, timeout_s: float, *, resend_complete: bool
    ) -> Result:
        session_id = _session_id(session)
        existed = isinstance(session, StartedSession)
        deadline = time.monotonic() + timeout_s
        last_error: VitalcamError | None = None
        while True:
            try:
                result = self._get_result(session_id)
            except SessionNotFound as exc:
                if existed:
                    raise not_persisted(session_id) from exc
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
                        return self.complete(session_id)
                    except NetworkError as exc:
                        if not exc.maybe_processed:
                            raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(
                    f"session {session_id} had no result after {timeout_s:g} s of polling"
                    + (f" (last error: {last_error})" if last_error else ""),
                )
            time.sleep(min(interval_s, remaining))


def _session_id(session: StartedSession | str) -> str:
    return session.session_id if isinstance(session, StartedSession) else session


__all__ = ["SessionClient"]
