"""The workflow's building blocks: paths, headers, payload streaming, deadlines and response checks.

The workflow that uses them is transport/_base.py (flows of steps, no I/O); the two clients only carry
the steps out, so they cannot drift apart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from contract.sessions import RESULT_STATUSES, SessionStatus
from transport._json import parse_json
from transport.errors import (
    DeadlineExceeded,
    NetworkError,
    ResultNotPersisted,
    SessionExpired,
    UnexpectedResponse,
    VitalcamError,
    error_from_response,
    error_from_transport,
    request_id_of,
    unexpected_body,
)
from transport.models import Demographics, Result

START_PATH = "/sdk/session/start"
COMPLETE_PATH = "/sdk/session/upload-complete"
RESULT_PATH = "/sdk/session/result/{session_id}"
UPLOAD_CONTENT_TYPE = "video/webm"  # the spec's label; the body is the vitalcam tensor (safetensors)
CHUNK_BYTES = 256 * 1024
# The sessions API answers with a few KB of JSON; a bigger answer is refused instead of buffered.
MAX_RESPONSE_BYTES = 1024 * 1024
# Errors raised by httpx that are not transport failures but still mean "this answer is unusable".
RESPONSE_ERRORS = (httpx.DecodingError, httpx.TooManyRedirects, httpx.InvalidURL)
# Statuses meaning "upload-complete never reached the server": polling will not progress, so send it again.
# ("uploaded" is no spec status; a server that reports one means the same.)
NOT_STARTED_STATUSES = frozenset({SessionStatus.CREATED, SessionStatus.UPLOADING, "uploaded"})

Progress = Callable[[int, int], None]
Payload = bytes | bytearray | memoryview | Path | str


def user_agent() -> str:
    from contract import __version__

    return f"vitalcam-transport/{__version__} (+httpx/{httpx.__version__})"


def api_headers(api_key: str) -> dict[str, str]:
    """Headers for API calls. Never used for the upload URL, which may point at third-party storage."""
    return {"X-API-Key": api_key, "X-Request-Id": new_request_id(), "Accept": "application/json"}


def new_request_id() -> str:
    """Sent with each request so a failure can be traced even when no response ever arrives."""
    return uuid.uuid4().hex


def start_body(demographics: Demographics | None) -> dict[str, Any]:
    return {"demographics": demographics.to_json()} if demographics is not None else {}


@dataclass(frozen=True, slots=True)
class PayloadSource:
    """A tensor to upload, from memory or from a file, streamed in chunks with progress reports.

    Files are read chunk by chunk on every attempt (the bytes never need to fit in memory twice) and
    re-opened on retry, so a retried PUT starts again from the first byte.
    """

    data: bytes | None
    path: Path | None
    size: int

    @classmethod
    def of(cls, payload: Payload) -> PayloadSource:
        if isinstance(payload, str | Path):
            path = Path(payload)
            return cls(data=None, path=path, size=path.stat().st_size)
        data = bytes(payload)
        return cls(data=data, path=None, size=len(data))

    def chunks(self, progress: Progress | None) -> Iterator[bytes]:
        sent = 0
        if progress:
            progress(0, self.size)
        for chunk in self._raw_chunks():
            yield chunk
            sent += len(chunk)
            if progress:
                progress(sent, self.size)

    async def achunks(self, progress: Progress | None) -> AsyncIterator[bytes]:
        # Local file reads of 256 KiB are fast enough that a thread hop per chunk would cost more than it saves.
        for chunk in self.chunks(progress):
            yield chunk

    def _raw_chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(0, self.size, CHUNK_BYTES):
                yield bytes(view[start : start + CHUNK_BYTES])
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk


def upload_headers(size: int) -> dict[str, str]:
    # An explicit Content-Length stops httpx from using chunked encoding, which presigned storage URLs reject.
    return {
        "Content-Type": UPLOAD_CONTENT_TYPE,
        "Content-Length": str(size),
        "X-Request-Id": new_request_id(),
    }


def json_body(response: httpx.Response, what: str) -> Any:
    """The JSON body of a success response, or the typed error for anything else."""
    if not response.is_success:
        raise error_from_response(response)
    try:
        return parse_json(response.content)
    except ValueError:
        raise unexpected_body(response, what) from None


@dataclass(frozen=True, slots=True)
class Deadline:
    """When one request must be over (monotonic s), and why: its own timeout or the measurement's."""

    at_s: float
    timeout_s: float
    measure_binds: bool

    @classmethod
    def within(cls, timeout_s: float, measure_ends_at_s: float | None = None) -> Deadline:
        """`timeout_s` from now, cut to the enclosing measurement's deadline (monotonic s) if it is sooner."""
        own_s = time.monotonic() + timeout_s
        if measure_ends_at_s is not None and measure_ends_at_s <= own_s:
            return cls(measure_ends_at_s, timeout_s, True)
        return cls(own_s, timeout_s, False)

    def check_not_passed(self, method: str, url: str) -> None:
        """Before sending: a measurement out of time sends nothing more."""
        if self.measure_binds and self.at_s <= time.monotonic():
            raise DeadlineExceeded(f"the measurement's deadline passed before {method} {_no_query(url)}")

    def transport_error(self, exc: httpx.TransportError, request: httpx.Request) -> NetworkError:
        measure_passed = self.measure_binds and self.at_s - time.monotonic() <= 0.01
        if measure_passed:
            note = "the measurement's deadline (measure_timeout_s) passed"
        else:
            note = f"no complete answer within the request's deadline of {self.timeout_s:g} s"
        return error_from_transport(exc, request, deadline_note=note, measure_deadline_passed=measure_passed)


def _no_query(url: str) -> str:
    return url.split("?", 1)[0]


class BodyReader:
    """Collects a streamed response body, never more than `max_bytes` and never past the deadline.

    A success body over the limit is an UnexpectedResponse (nothing the API sends is that big, and
    buffering it is how a 300 MiB answer cost the client 900 MiB); an error body is cut at the limit,
    since only its start is shown.
    """

    def __init__(self, response: httpx.Response, max_bytes: int, deadline: Deadline) -> None:
        self.response = response
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.body = bytearray()

    def add(self, chunk: bytes) -> bool:
        """Take one chunk; False when reading should stop (an error body at the limit)."""
        if time.monotonic() > self.deadline.at_s:
            raise httpx.ReadTimeout("the request's deadline passed", request=self.response.request)
        room = self.max_bytes - len(self.body)
        if len(chunk) <= room:
            self.body += chunk
            return True
        if self.response.is_success:
            request = self.response.request
            raise UnexpectedResponse(
                f"HTTP {self.response.status_code} from {request.method} {request.url.copy_with(query=None)}: "
                f"the body exceeds the {self.max_bytes}-byte limit for an API answer",
                status=self.response.status_code,
                request_id=request_id_of(self.response),
            )
        self.body += chunk[:room]
        return False

    def finish(self) -> httpx.Response:
        """A fully read response with the collected (already decoded) body."""
        skip = {b"content-encoding", b"content-length", b"transfer-encoding"}
        headers = [(k, v) for k, v in self.response.headers.raw if k.lower() not in skip]
        extensions = {
            k: v for k, v in self.response.extensions.items() if k in ("http_version", "reason_phrase")
        }
        return httpx.Response(
            self.response.status_code,
            headers=headers,
            content=bytes(self.body),
            request=self.response.request,
            extensions=extensions,
        )


def unusable_answer(
    exc: Exception, method: str, url: str | httpx.URL, request_id: str | None = None
) -> UnexpectedResponse:
    """httpx could not use what came back (undecodable body, a URL it cannot parse): a typed error."""
    return UnexpectedResponse(
        f"unusable answer to {method} {_no_query(str(url))}: {type(exc).__name__}: {str(exc)[:200]}",
        request_id=request_id,
    )


def unexpected_failure(exc: Exception) -> VitalcamError:
    """Last resort for `measure()`: a failure no rule above typed still gets a VitalcamError (and the outbox)."""
    error = VitalcamError(
        f"unexpected failure: {type(exc).__name__}: {str(exc)[:300]}", code="UNEXPECTED_ERROR"
    )
    error.__cause__ = exc
    return error


def check_upload(response: httpx.Response) -> None:
    if not response.is_success:
        raise error_from_response(response, upload=True)


def complete_should_retry(exc: VitalcamError) -> bool:
    """Repeat upload-complete only when the server surely did not start processing it.

    A read timeout or a connection dropped while waiting means the request arrived and inference may be
    running; repeating it could run inference twice or, with PERSIST_VITALS=false, hit a deleted session.
    Those cases go to polling instead.
    """
    return exc.retryable and not (isinstance(exc, NetworkError) and exc.maybe_processed)


def upload_landed_status(status: str) -> bool:
    """After a lost PUT response and a 403 on the retry: does the session show the first PUT arrived?"""
    return status not in {SessionStatus.CREATED, SessionStatus.EXPIRED}


def terminal_or_raise(result: Result) -> Result | None:
    """The result when polling can stop, None to keep polling; raises when the session expired."""
    if result.status in RESULT_STATUSES:
        return result
    if result.status == SessionStatus.EXPIRED:
        raise SessionExpired(
            f"session {result.session_id} expired before a result was produced; start a new session",
            status=200,
        )
    return None


def not_persisted(session_id: str) -> ResultNotPersisted:
    return ResultNotPersisted(
        f"session {session_id} existed but its result is gone: this server does not persist vitals "
        "(PERSIST_VITALS=false, the spec's default), so the upload-complete response was the only copy and it "
        "was lost in transit. Submit the measurement again with a new session (measure() keeps it in the "
        "outbox for retry_outbox()), or enable PERSIST_VITALS on the server to make polling work.",
        status=404,
    )


__all__ = [
    "COMPLETE_PATH",
    "MAX_RESPONSE_BYTES",
    "NOT_STARTED_STATUSES",
    "RESPONSE_ERRORS",
    "RESULT_PATH",
    "START_PATH",
    "UPLOAD_CONTENT_TYPE",
    "BodyReader",
    "Deadline",
    "Payload",
    "PayloadSource",
    "Progress",
    "api_headers",
    "check_upload",
    "complete_should_retry",
    "json_body",
    "not_persisted",
    "start_body",
    "terminal_or_raise",
    "unexpected_failure",
    "unusable_answer",
    "upload_headers",
    "upload_landed_status",
    "user_agent",
]
