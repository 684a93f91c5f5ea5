"""What the OpenAPI document says about errors and limit headers, shared by the routers."""

from __future__ import annotations

from typing import Any

from server.models import ErrorBody

_DESCRIPTIONS = {
    400: "INVALID_REQUEST: invalid body or parameters (the message names the field)",
    401: "API_KEY_INVALID: invalid, revoked, or missing API key",
    403: "FORBIDDEN: session belongs to another developer, or bad/expired/used upload signature",
    404: "SESSION_NOT_FOUND: no such session",
    409: "UPLOAD_IN_PROGRESS: another upload to this URL is running",
    410: "SESSION_EXPIRED: the session expired before completion",
    413: "PAYLOAD_TOO_LARGE: upload exceeds the size limit",
    429: "RATE_LIMIT_EXCEEDED (retryable, Retry-After) or QUOTA_EXCEEDED (not retryable)",
    503: "SERVICE_UNAVAILABLE or RESULT_PENDING (retryable): a store, the queue or inference is not ready",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}


LIMIT_HEADERS = {
    name: {"schema": {"type": "integer"}, "description": description}
    for name, description in (
        ("X-RateLimit-Limit", "Requests allowed per key per hour"),
        ("X-RateLimit-Remaining", "Requests left in this hour"),
        ("X-RateLimit-Reset", "Unix time (s) when the hourly window resets"),
        ("X-Usage-Current", "Sessions started by this developer this month"),
        ("X-Usage-Limit", "Monthly session quota"),
        ("X-Usage-Remaining", "Sessions left this month"),
    )
}
