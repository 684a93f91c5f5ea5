"""Typed errors: one class per error code of the sessions API, all under `VitalcamError`.

Callers branch on classes (or on `.retryable`), never on message text. Every non-success response ends in
one of these, including bodies that are not the documented `{"error", "message", "retryable"}` JSON (a proxy's
HTML page, an empty 502, a truncated body), so no caller ever sees a KeyError or a JSONDecodeError.
"""

from __future__ import annotations

import email.utils
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx

from contract import errors as codes
from transport._json import parse_json

_SNIPPET_CHARS = 200


class VitalcamError(Exception):
    """Base class of every transport error.

    `status` is the HTTP status (None for network errors), `code` the API error code (or a synthetic one such
    as NETWORK_ERROR), `retryable` whether the same request may succeed later, `request_id` the server's
    `X-Request-Id` (or the one we sent) for support tickets. `outbox_path` is set by `measure()` when the
    payload was saved for a later `retry_outbox()`.
    """

    default_code: ClassVar[str] = "ERROR"
    default_retryable: ClassVar[bool] = False
    # Whether replaying the same payload later with a fresh session can succeed. False only when the server
    # rejected the payload itself, so keeping it in an outbox would just fail again forever.
    replayable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.retryable = self.default_retryable if retryable is None else retryable
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.body = body
        self.outbox_path: Path | None = None

    def __str__(self) -> str:
        saved = f" (measurement saved to {self.outbox_path})" if self.outbox_path else ""
        return f"{self.summary}{saved}"

    @property
    def summary(self) -> str:
        """Code, status, message and request id: `str()` without the outbox path, for a display that
        names the path once itself."""
        where = f" HTTP {self.status}" if self.status is not None else ""
        rid = f" [request {self.request_id}]" if self.request_id else ""
        return f"{self.code}{where}: {self.message}{rid}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r}, "
            f"retryable={self.retryable!r}, request_id={self.request_id!r})"
        )


class InvalidRequest(VitalcamError):
    """400: missing session_id, bad demographics or a tensor the server rejected (message names the field)."""

    default_code = codes.INVALID_REQUEST.code
    replayable = False


class PayloadTooLarge(InvalidRequest):
    """413 on the upload: the tensor exceeds the server's size limit (64 MiB for format v1)."""

    default_code = codes.PAYLOAD_TOO_LARGE.code


class ApiKeyInvalid(VitalcamError):
    """401: the API key is invalid, revoked or missing. Not retried: only a new key helps."""

    default_code = codes.API_KEY_INVALID.code


class Forbidden(VitalcamError):
    """403: the session belongs to another developer (or the key may not use it)."""

    default_code = codes.FORBIDDEN.code


class SessionNotFound(VitalcamError):
    """404: no such session id."""

    default_code = codes.SESSION_NOT_FOUND.code


class ResultNotPersisted(SessionNotFound):
    """The session existed but its result can no longer be fetched: the server does not persist vitals.

    With PERSIST_VITALS=false (the spec's default) the upload-complete response is the only copy of the
    result; if that response was lost (timeout, dropped connection) the result is gone and the measurement
    must be submitted again with a fresh session. `measure()` saves it to the outbox for exactly that.
    """

    default_code = "RESULT_NOT_PERSISTED"


class RateLimitExceeded(VitalcamError):
    """429: hourly rate limit hit; retried after `retry_after_s` (from Retry-After) within the policy."""

    default_code = codes.RATE_LIMIT_EXCEEDED.code
    default_retryable = codes.RATE_LIMIT_EXCEEDED.retryable


class QuotaExceeded(VitalcamError):
    """429: monthly scan quota used up. Not retried: it will not reset within any sensible retry window."""

    default_code = codes.QUOTA_EXCEEDED.code


class SessionExpired(VitalcamError):
    """The session timed out (30 min after creation) before completing; start a new session."""

    default_code = codes.SESSION_EXPIRED.code


class UploadUrlExpired(SessionExpired):
    """403 on the presigned upload URL: its signature expired with the session or was already used.

    A subclass of SessionExpired rather than Forbidden because the remedy is the same as for an expired
    session (start a new one and upload again), while Forbidden means an ownership problem no retry fixes.
    """

    default_code = "UPLOAD_URL_EXPIRED"


class Conflict(VitalcamError):
    """409: the session is changing state (e.g. another upload is in flight); retryable unless said otherwise."""

    default_code = "CONFLICT"
    default_retryable = True


class ServerError(VitalcamError):
    """5xx from the server or a gateway in front of it; retried, since these are usually transient."""

    default_code = "SERVER_ERROR"
    default_retryable = True


class ResultTimeout(VitalcamError):
    """Polling gave up: the session was still processing when `wait_result`'s timeout ran out."""

    default_code = "RESULT_TIMEOUT"
    default_retryable = True


class UnexpectedResponse(VitalcamError):
    """A response that is neither a documented success nor a documented error (e.g. HTML from a proxy)."""

    default_code = "UNEXPECTED_RESPONSE"


class NetworkError(VitalcamError):
    """No usable response: connection refused or dropped, DNS failure, TLS error or a timeout.

    `maybe_processed` is True when the whole request had been sent before the failure (a read timeout, a
    connection dropped while waiting for the answer): the server may have acted on it, so a non-idempotent
    step should be confirmed (e.g. by polling) rather than blindly repeated.
    """

    default_code = "NETWORK_ERROR"
    default_retryable = True

    def __init__(self, message: str, *, maybe_processed: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.maybe_processed = maybe_processed


class DeadlineExceeded(NetworkError):
    """`measure()` ran out of its `measure_timeout_s`: whatever step was running was cut short.

    Retryable (the same payload may well succeed later), so `measure(outbox=...)` keeps it.
    """

    default_code = "DEADLINE_EXCEEDED"


# The API's codes (contract/errors.py, shared with the server) that have a class of their own.
ERROR_CLASSES: dict[str, type[VitalcamError]] = {
    codes.INVALID_REQUEST.code: InvalidRequest,
    codes.PAYLOAD_TOO_LARGE.code: PayloadTooLarge,
    codes.API_KEY_INVALID.code: ApiKeyInvalid,
    codes.FORBIDDEN.code: Forbidden,
    codes.SESSION_NOT_FOUND.code: SessionNotFound,
    codes.RATE_LIMIT_EXCEEDED.code: RateLimitExceeded,
    codes.QUOTA_EXCEEDED.code: QuotaExceeded,
    codes.SESSION_EXPIRED.code: SessionExpired,
    codes.REQUEST_TIMEOUT.code: NetworkError,  # the server stopped waiting for our request
}

# Used when the body carries no (known) code: the status alone still picks a sensible class.
_STATUS_CLASSES: dict[int, type[VitalcamError]] = {
    400: InvalidRequest,
    401: ApiKeyInvalid,
    403: Forbidden,
    408: NetworkError,  # the server stopped waiting for our request; nothing was processed
    410: SessionExpired,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimitExceeded,
}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None when absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)  # inf stays inf: the policy refuses it
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, OSError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _body_snippet(response: httpx.Response) -> str:
    try:
        text = response.text
    except Exception:  # undecodable body: the status line is all we can show
        return "<undecodable body>"
    text = " ".join(text.split())
    if not text:
        return "<empty body>"
    return text[:_SNIPPET_CHARS] + ("…" if len(text) > _SNIPPET_CHARS else "")


def request_id_of(response: httpx.Response) -> str | None:
    """The server's request id, falling back to the one we sent so lost responses can still be traced."""
    request_id: str | None = response.headers.get("x-request-id")
    return request_id or response.request.headers.get("x-request-id")


def error_from_response(response: httpx.Response, *, upload: bool = False) -> VitalcamError:
    """Build the typed error for a non-2xx response, whatever its body looks like.

    `upload=True` marks a response from the presigned upload URL, whose 403 means "signature expired or
    already used" rather than an ownership problem.
    """
    status = response.status_code
    request_id = request_id_of(response)
    retry_after_s = parse_retry_after(response.headers.get("retry-after"))
    body: Any = None
    try:
        body = parse_json(response.content) if response.content else None
    except ValueError:
        body = None
    code = body.get("error") if isinstance(body, dict) else None
    code = code if isinstance(code, str) and code else None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        reason = response.reason_phrase or "error"
        message = f"{reason} from {response.request.method} {response.request.url.copy_with(query=None)}"
        if code is None:
            message += f" (not the documented JSON error body: {_body_snippet(response)})"
    body_retryable = body.get("retryable") if isinstance(body, dict) else None

    cls: type[VitalcamError]
    retryable: bool | None = None
    if upload and status == 403:
        cls = UploadUrlExpired
        message = f"{message}. The upload URL has expired or was already used: start a new session."
    elif upload and status == 413:
        cls = PayloadTooLarge
    elif code in ERROR_CLASSES:
        cls = ERROR_CLASSES[code]
    elif status >= 500 or status == 409:
        cls = ServerError if status >= 500 else Conflict
        # A server may say a 5xx is permanent (e.g. misconfiguration), in the body or by a code the shared
        # table calls permanent (SERVER_MISCONFIGURED); otherwise 5xx is transient.
        known = codes.ERROR_CODES.get(code) if code is not None else None
        retryable = body_retryable if isinstance(body_retryable, bool) else known.retryable if known else None
    elif status in _STATUS_CLASSES:
        cls = _STATUS_CLASSES[status]
    else:
        cls = UnexpectedResponse
        retryable = body_retryable if isinstance(body_retryable, bool) else None
    # Known codes keep the client's retry classification: a server claiming a 401 is retryable must not
    # turn a bad key into a retry storm.
    return cls(
        message,
        status=status,
        code=code or cls.default_code,
        retryable=retryable,
        request_id=request_id,
        retry_after_s=retry_after_s,
        body=body,
    )


def error_from_transport(
    exc: httpx.TransportError,
    request: httpx.Request | None = None,
    *,
    deadline_note: str | None = None,
    measure_deadline_passed: bool = False,
) -> NetworkError:
    """Wrap an httpx transport failure, recording whether the server may already have acted on the request.

    `deadline_note` explains a timeout that was a deadline rather than one slow socket operation;
    `measure_deadline_passed` makes it a DeadlineExceeded (the whole measurement ran out of time).
    """
    maybe_processed = isinstance(exc, httpx.ReadTimeout | httpx.ReadError | httpx.RemoteProtocolError)
    try:
        req = request or exc.request
    except RuntimeError:  # httpx raises when the exception was created without a request
        req = None
    where = f" during {req.method} {req.url.copy_with(query=None)}" if req is not None else ""
    timed_out = isinstance(exc, httpx.TimeoutException)
    kind = "timed out" if timed_out else "failed"
    detail = str(exc) or type(exc).__name__
    if timed_out and deadline_note:
        detail = deadline_note
    cls = DeadlineExceeded if timed_out and measure_deadline_passed else NetworkError
    return cls(
        f"network request {kind}{where}: {detail}",
        maybe_processed=maybe_processed,
        request_id=req.headers.get("x-request-id") if req is not None else None,
    )


def unexpected_body(response: httpx.Response, what: str) -> UnexpectedResponse:
    """A 2xx whose body is not the documented JSON: a clear error instead of a KeyError later."""
    return UnexpectedResponse(
        f"{what}: HTTP {response.status_code} from {response.request.method} "
        f"{response.request.url.copy_with(query=None)} is not the documented JSON ({_body_snippet(response)})",
        status=response.status_code,
        request_id=request_id_of(response),
    )


__all__ = [
    "ERROR_CLASSES",
    "ApiKeyInvalid",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "InvalidRequest",
    "NetworkError",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimitExceeded",
    "ResultNotPersisted",
    "ResultTimeout",
    "ServerError",
    "SessionExpired",
    "SessionNotFound",
    "UnexpectedResponse",
    "UploadUrlExpired",
    "VitalcamError",
    "error_from_response",
    "error_from_transport",
    "parse_retry_after",
    "unexpected_body",
]
