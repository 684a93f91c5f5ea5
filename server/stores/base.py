"""The two storage seams of the server, as protocols: `SessionStore` (rows) and `BlobStore` (tensors).

The session service talks only to these, so a new backend is one class that passes the contract tests
(tests/test_server_stores.py runs them over every implementation). Both are synchronous: the service
calls them from a thread pool, which suits SQLite and psycopg alike and keeps each method one short
transaction that either happened or did not.

Whatever a store keeps about a session must be removable on request: `delete_session` and
`BlobStore.delete` are the privacy deletions of PERSIST_VITALS=false, and each store documents what it
does so that no byte of the deleted data stays on its disk.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol

from contract.sessions import SessionStatus

KEY_PATTERN: Final = re.compile(r"^ck_(test|live)_([0-9a-f]{48})$")
KEY_ID_HEX_CHARS: Final = 12
RATE_WINDOW_S: Final = 3600
_SESSION_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class StoreUnavailable(Exception):
    """A store or the queue could not be reached; the request is answered 503 and may be repeated."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What `vitalcam keys list` shows: a public id, never the key or its hash."""

    key_id: str
    developer: str
    live: bool
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class AuthedKey:
    key_id: str
    developer_id: int


@dataclass(frozen=True, slots=True)
class RateState:
    """One key's hourly window after counting this request (`allowed` False once the limit is spent)."""

    limit: int
    remaining: int
    reset_at: int
    allowed: bool


@dataclass(frozen=True, slots=True)
class UsageState:
    """One developer's monthly scan count; `current` includes this request when it consumed a scan."""

    current: int
    limit: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.current)


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    developer_id: int
    key_id: str
    status: SessionStatus
    created_at: float
    expires_at: int
    demographics: dict[str, Any] | None
    fallback_config: dict[str, Any]
    uploaded_at: float | None
    upload_bytes: int | None
    response: dict[str, Any] | None
    completed_at: float | None
    # Who holds an `uploading` or `processing` session: the random token of the request that claimed
    # it. Releases are conditional on it, so a request that cannot tell whether its claim was written
    # (the database acknowledgement was lost) can release it later without touching anyone else's.
    claim_token: str | None = None


@dataclass(frozen=True, slots=True)
class NewSession:
    """What `start_session` writes: everything a session row holds when it is created."""

    session_id: str
    key: AuthedKey
    now_s: float
    ttl_s: int
    demographics: dict[str, Any] | None
    fallback_config: dict[str, Any]


class SessionStore(Protocol):
    """Developers, API keys, sessions, monthly usage and hourly rate windows.

    Counters must be exact however many processes share the store: `count_request` and `start_session`
    check and increment in one atomic step. `transition` is a compare-and-set, the only way a status
    changes after creation; the session service decides which transitions are legal. A request that
    claims a session (created → uploading, uploading → processing) writes a claim token of its own, and
    every step that only the claimant may take (recording its upload, releasing the claim) requires it.
    """

    def close(self) -> None: ...

    # keys
    def create_key(self, developer: str, live: bool = False, now_s: float | None = None) -> str: ...
    def revoke_key(self, key_id: str, now_s: float | None = None) -> None: ...
    def list_keys(self) -> list[KeyInfo]: ...
    def authenticate(self, key: str | None) -> AuthedKey | None: ...

    # limits
    def count_request(self, key_id: str, now_s: float, limit: int) -> RateState: ...
    def usage(self, developer_id: int, now_s: float, limit: int) -> UsageState: ...

    # sessions
    def start_session(self, new: NewSession, quota: int) -> tuple[UsageState, int | None]:
        """Consume one scan and create the session atomically; expiry None when the quota was spent."""
        ...

    def get_session(self, session_id: str) -> SessionRow | None: ...

    def transition(
        self,
        session_id: str,
        from_status: SessionStatus,
        to_status: SessionStatus,
        *,
        require_upload: bool | None = None,
        claim: str | None = None,
        holder: str | None = None,
    ) -> bool:
        """Set `to_status` and the claim token `claim` (None clears it) if the session is in
        `from_status`, has / has not an upload as `require_upload` says, and, when `holder` is given, is
        held under that token; False if not."""
        ...

    def finish_upload(self, session_id: str, now_s: float, n_bytes: int, *, claim: str) -> bool:
        """Record a stored upload on a session `uploading` under `claim`; False if it no longer is."""
        ...

    def record_direct_upload(self, session_id: str, now_s: float, n_bytes: int) -> bool:
        """created → uploading with the upload recorded, in one statement; False if not `created`."""
        ...

    def release_upload(self, session_id: str, *, claim: str) -> bool:
        """uploading → created with any recorded upload forgotten, in one statement, if the session is
        still held under `claim` (the PUT failed or its tensor was refused); False if not."""
        ...

    def store_response(
        self, session_id: str, status: SessionStatus, response: dict[str, Any], completed_at_s: float
    ) -> bool:
        """Keep the result on a `processing` session; False if it is not processing any more."""
        ...

    def delete_session(self, session_id: str) -> None:
        """Remove the session row so that no byte of it remains in the store's files."""
        ...

    def recover_after_restart(self) -> None:
        """The only process of a single-process server restarted: put mid-flight sessions back."""
        ...

    def sweep(self, now_s: float, retention_s: int) -> list[str]:
        """Expire sessions past their expiry (dropping results and demographics) and remove old
        tombstones and rate windows; returns the ids expired in this pass (their blobs go too)."""
        ...


class BlobWriter(Protocol):
    """One upload being written; nothing is visible under the session's name until `commit`."""

    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


class BlobStore(Protocol):
    """Where uploaded tensors wait between the PUT and upload-complete.

    `presigned_put_url` is None when clients upload through the API (the API then signs its own URL and
    streams the body into `writer`); otherwise it is a URL of the store itself, and the API never sees
    the bytes until upload-complete reads them (`direct_uploads` says which).
    """

    direct_uploads: bool

    def presigned_put_url(self, session_id: str, expires_at: int, max_bytes: int) -> str | None: ...
    def writer(self, session_id: str) -> AbstractContextManager[BlobWriter]: ...
    def read(self, session_id: str, max_bytes: int) -> bytes | None:
        """The stored tensor, None when there is none; ValueError when it is larger than `max_bytes`."""
        ...

    def delete(self, session_id: str) -> None: ...
    def discard_partials(self) -> None:
        """Remove uploads a previous process left half-written."""
        ...

    def close(self) -> None: ...


def transition_statement(
    session_id: str,
    from_status: SessionStatus,
    to_status: SessionStatus,
    *,
    require_upload: bool | None,
    claim: str | None,
    holder: str | None,
    mark: str,
) -> tuple[str, tuple[Any, ...]]:
    """The compare-and-set of `SessionStore.transition` as (SQL, parameters), with `mark` the dialect's
    placeholder, so that every store states the same condition."""
    sql = f"UPDATE sessions SET status = {mark}, claim_token = {mark} WHERE id = {mark} AND status = {mark}"
    params: list[Any] = [to_status.value, claim, session_id, from_status.value]
    if require_upload is True:
        sql += " AND uploaded_at IS NOT NULL"
    elif require_upload is False:
        sql += " AND uploaded_at IS NULL"
    if holder is not None:
        sql += f" AND claim_token = {mark}"
        params.append(holder)
    return sql, tuple(params)


def hash_key(key: str) -> bytes:
    """SHA-256 of the whole key: keys carry 192 random bits, so a slow password hash buys nothing."""
    return hashlib.sha256(key.encode("ascii")).digest()


def key_id_of(key: str) -> str | None:
    """The public id (`ck_test_` plus the first 12 hex digits) of a well-formed key, else None."""
    match = KEY_PATTERN.match(key)
    if match is None:
        return None
    return f"ck_{match.group(1)}_{match.group(2)[:KEY_ID_HEX_CHARS]}"


def month_of(now_s: float) -> str:
    """Quota months are UTC calendar months, e.g. '2026-11'."""
    return time.strftime("%Y-%m", time.gmtime(now_s))


def month_end_s(now_s: float) -> int:
    t = time.gmtime(now_s)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))


def rate_window_start(now_s: float) -> int:
    """Rate limits count per clock hour (UTC), so every process agrees on the window without talking."""
    return int(now_s) // RATE_WINDOW_S * RATE_WINDOW_S


def is_session_id(text: str) -> bool:
    """Session ids are lowercase canonical UUIDs, as `str(uuid.uuid4())` writes them."""
    return _SESSION_ID.fullmatch(text) is not None


def checked_session_id(session_id: str) -> str:
    """Only canonical UUIDs name blobs, so no id can name a path or key outside the store's own."""
    if not is_session_id(session_id):
        raise ValueError(f"not a session id: {session_id!r}")
    return session_id
