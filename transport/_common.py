"""What the sync and async clients share: paths, headers, payload streaming and response checks.

Only I/O differs between `SessionClient` and `AsyncSessionClient`; every decision that can be made without
I/O lives here so the two cannot drift apart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from transport.errors import (
    NetworkError,
    ResultNotPersisted,
    SessionExpired,
    VitalcamError,
    error_from_response,
    unexpected_body,
)
from transport.models import Demographics, Result

START_PATH = "/sdk/session/start"
COMPLETE_PATH = "/sdk/session/upload-complete"
RESULT_PATH = "/sdk/session/result/{session_id}"
UPLOAD_CONTENT_TYPE = "video/webm"  # the spec's label; the body is the vitalcam tensor (safetensors)
CHUNK_BYTES = 256 * 1024
# Statuses meaning "upload-complete never reached the server": polling will not progress, so send it again.
NOT_STARTED_STATUSES = frozenset({"created", "uploading", "uploaded"})

Progress = Callable[[int, int], None]
Payload = bytes | bytearray | memoryview | Path | str


def user_agent() -> str:
    from vitalcam import __version__

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

    def read_all(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()  # type: ignore[union-attr]

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
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise unexpected_body(response, what) from None


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
    return status not in {"created", "expired"}


def terminal_or_raise(result: Result) -> Result | None:
    """The result when polling can stop, None to keep polling; raises when the session expired."""
    if result.status in ("completed", "failed"):
        return result
    if result.status == "expired":
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
    "NOT_STARTED_STATUSES",
    "RESULT_PATH",
    "START_PATH",
    "UPLOAD_CONTENT_TYPE",
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
    "upload_headers",
    "upload_landed_status",
    "user_agent",
]
