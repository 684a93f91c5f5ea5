"""Every error code the sessions API answers with: its HTTP status and whether retrying can help.

The body of every error is `{"error": CODE, "message": human text, "retryable": bool}`. The server builds
its errors from this table and the client maps codes to its typed exceptions with it, so the two cannot
disagree about what a code means. The spec's six codes come first; the rest are this implementation's
(documented in docs/api.md).

`retryable` means "the same request may succeed later without changing anything": a rate limit, a
timeout, a conflict with a request still running, a server or dependency that is down. A client's
mistakes and a spent quota are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One code of the error body: the machine-readable `code`, its HTTP status, and `retryable`."""

    code: str
    http_status: int
    retryable: bool
    description: str


# The spec's codes.
INVALID_REQUEST: Final = ErrorCode(
    "INVALID_REQUEST", 400, False, "Missing session_id or invalid parameters (the message names the field)"
)
API_KEY_INVALID: Final = ErrorCode("API_KEY_INVALID", 401, False, "Invalid, revoked, or missing API key")
FORBIDDEN: Final = ErrorCode(
    "FORBIDDEN",
    403,
    False,
    "Session does not belong to this developer, or the upload URL's signature is invalid, expired or used",
)
SESSION_NOT_FOUND: Final = ErrorCode("SESSION_NOT_FOUND", 404, False, "Session ID does not exist")
RATE_LIMIT_EXCEEDED: Final = ErrorCode(
    "RATE_LIMIT_EXCEEDED", 429, True, "Hourly rate limit exceeded (Retry-After says when)"
)
QUOTA_EXCEEDED: Final = ErrorCode("QUOTA_EXCEEDED", 429, False, "Monthly scan quota exceeded")

# This implementation's codes.
NOT_FOUND: Final = ErrorCode("NOT_FOUND", 404, False, "No such route")
METHOD_NOT_ALLOWED: Final = ErrorCode("METHOD_NOT_ALLOWED", 405, False, "The route exists, not this method")
REQUEST_TIMEOUT: Final = ErrorCode(
    "REQUEST_TIMEOUT", 408, True, "The request body stalled or took longer than allowed"
)
UPLOAD_IN_PROGRESS: Final = ErrorCode(
    "UPLOAD_IN_PROGRESS", 409, True, "Another request is changing this session (e.g. an upload is running)"
)
SESSION_EXPIRED: Final = ErrorCode("SESSION_EXPIRED", 410, False, "The session expired before completion")
PAYLOAD_TOO_LARGE: Final = ErrorCode("PAYLOAD_TOO_LARGE", 413, False, "Body exceeds the size limit")
INTERNAL_ERROR: Final = ErrorCode("INTERNAL_ERROR", 500, True, "Unexpected server error")
SERVER_MISCONFIGURED: Final = ErrorCode(
    "SERVER_MISCONFIGURED", 500, False, "The server cannot build upload URLs as configured"
)
SERVICE_UNAVAILABLE: Final = ErrorCode(
    "SERVICE_UNAVAILABLE",
    503,
    True,
    "A service the server depends on (database, object store, queue) is unreachable; nothing was lost",
)
RESULT_PENDING: Final = ErrorCode(
    "RESULT_PENDING",
    503,
    True,
    "Inference is still running after the server's wait; repeat upload-complete (or poll) to get the result",
)
HTTP_ERROR: Final = ErrorCode("HTTP_ERROR", 400, False, "Any other HTTP-level refusal")

ERROR_CODES: Final[Mapping[str, ErrorCode]] = {
    e.code: e
    for e in (
        INVALID_REQUEST,
        API_KEY_INVALID,
        FORBIDDEN,
        SESSION_NOT_FOUND,
        RATE_LIMIT_EXCEEDED,
        QUOTA_EXCEEDED,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        REQUEST_TIMEOUT,
        UPLOAD_IN_PROGRESS,
        SESSION_EXPIRED,
        PAYLOAD_TOO_LARGE,
        INTERNAL_ERROR,
        SERVER_MISCONFIGURED,
        SERVICE_UNAVAILABLE,
        RESULT_PENDING,
        HTTP_ERROR,
    )
}

# Codes only the spec defines; a client of any server speaking the spec can rely on these.
SPEC_CODES: Final = frozenset(
    {
        "INVALID_REQUEST",
        "API_KEY_INVALID",
        "FORBIDDEN",
        "SESSION_NOT_FOUND",
        "RATE_LIMIT_EXCEEDED",
        "QUOTA_EXCEEDED",
    }
)


def is_retryable(code: str, http_status: int | None = None) -> bool:
    """Retryability of a code; for a code not in the table, judged by its status (5xx, 408 and 429)."""
    known = ERROR_CODES.get(code)
    if known is not None:
        return known.retryable
    return http_status is not None and (http_status >= 500 or http_status in (408, 429))


__all__ = [
    "API_KEY_INVALID",
    "ERROR_CODES",
    "FORBIDDEN",
    "HTTP_ERROR",
    "INTERNAL_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_ALLOWED",
    "NOT_FOUND",
    "PAYLOAD_TOO_LARGE",
    "QUOTA_EXCEEDED",
    "RATE_LIMIT_EXCEEDED",
    "REQUEST_TIMEOUT",
    "RESULT_PENDING",
    "SERVER_MISCONFIGURED",
    "SERVICE_UNAVAILABLE",
    "SESSION_EXPIRED",
    "SESSION_NOT_FOUND",
    "SPEC_CODES",
    "UPLOAD_IN_PROGRESS",
    "ErrorCode",
    "is_retryable",
]
