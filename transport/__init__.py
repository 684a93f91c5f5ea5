"""Session-API client: start, upload, complete, poll; typed errors, retries and an outbox.

Quick use (see docs/transport.md)::

    from transport import SessionClient, Outbox
    with SessionClient(url, key) as client:
        result = client.measure(payload_bytes, outbox=Outbox())
"""

from transport._flow import RetryNotice
from transport.aio import AsyncSessionClient
from transport.client import SessionClient
from transport.errors import (
    ApiKeyInvalid,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    InvalidRequest,
    NetworkError,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimitExceeded,
    ResultNotPersisted,
    ResultTimeout,
    ServerError,
    SessionExpired,
    SessionNotFound,
    UnexpectedResponse,
    UploadUrlExpired,
    VitalcamError,
)
from transport.models import (
    Demographics,
    FallbackConfig,
    Range,
    RateLimit,
    Result,
    StartedSession,
    Usage,
    Vitals,
)
from transport.outbox import Outbox, OutboxItem, default_outbox_dir
from transport.replay import aretry_outbox, retry_outbox
from transport.retry import RetryPolicy

__all__ = [
    "ApiKeyInvalid",
    "AsyncSessionClient",
    "Conflict",
    "DeadlineExceeded",
    "Demographics",
    "FallbackConfig",
    "Forbidden",
    "InvalidRequest",
    "NetworkError",
    "Outbox",
    "OutboxItem",
    "PayloadTooLarge",
    "QuotaExceeded",
    "Range",
    "RateLimit",
    "RateLimitExceeded",
    "Result",
    "ResultNotPersisted",
    "ResultTimeout",
    "RetryNotice",
    "RetryPolicy",
    "ServerError",
    "SessionClient",
    "SessionExpired",
    "SessionNotFound",
    "StartedSession",
    "UnexpectedResponse",
    "UploadUrlExpired",
    "Usage",
    "VitalcamError",
    "Vitals",
    "aretry_outbox",
    "default_outbox_dir",
    "retry_outbox",
]
