"""SQLite storage for developers, API keys, sessions, usage and rate windows, plus the upload blobs.

One connection guarded by one lock: every operation here is a handful of indexed statements (tens of
microseconds), so serialising them is cheaper and simpler than a connection per thread fighting over
SQLite's single writer with busy retries, and it makes counters (rate limits, quota) exact under
concurrency. WAL mode keeps other processes (`vitalcam keys ...` while the server runs) from blocking
readers; `busy_timeout` covers their writes.

Deleting health data must reach the disk, not just the table: `secure_delete` zeroes deleted rows in the
pages they occupied, and every privacy deletion (a session after its upload-complete response, results and
demographics at expiry) ends with a truncating WAL checkpoint, because the WAL otherwise keeps earlier
copies of those pages (with the demographics and results in them) until later traffic overwrites them.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("vitalcam.server")

DB_NAME: Final = "vitalcam.sqlite3"
SECRET_NAME: Final = "server_secret"
UPLOADS_DIR: Final = "uploads"

KEY_PATTERN: Final = re.compile(r"^ck_(test|live)_([0-9a-f]{48})$")
KEY_ID_HEX_CHARS: Final = 12
RATE_WINDOW_S: Final = 3600
_SESSION_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS developers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    developer_id INTEGER NOT NULL REFERENCES developers(id),
    key_hash BLOB NOT NULL,
    live INTEGER NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    developer_id INTEGER NOT NULL REFERENCES developers(id),
    key_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at INTEGER NOT NULL,
    demographics TEXT,
    fallback_config TEXT NOT NULL,
    uploaded_at REAL,
    upload_bytes INTEGER,
    response TEXT,
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions(expires_at);
CREATE TABLE IF NOT EXISTS usage (
    developer_id INTEGER NOT NULL,
    month TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (developer_id, month)
);
CREATE TABLE IF NOT EXISTS rate_windows (
    key_id TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key_id, window_start)
);
"""


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
    status: str
    created_at: float
    expires_at: int
    demographics: dict[str, Any] | None
    fallback_config: dict[str, Any]
    uploaded_at: float | None
    upload_bytes: int | None
    response: dict[str, Any] | None
    completed_at: float | None


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


class Store:
    """The server's persistent state in `data_dir` (database, HMAC secret, uploads)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.uploads_dir = self.data_dir / UPLOADS_DIR
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.data_dir / DB_NAME, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        # Not left to the build's default: deleted rows and freed pages are overwritten with zeros.
        (secure_delete,) = self._conn.execute("PRAGMA secure_delete=ON").fetchone()
        if secure_delete != 1:
            raise RuntimeError("this SQLite build cannot enable secure_delete; refusing to store health data")
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; BEGIN IMMEDIATE takes the write lock up front so it never deadlocks."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to zero bytes (call with the lock held).

        After a privacy deletion this removes the earlier page images that still hold the deleted data.
        Another process reading at that moment makes SQLite wait up to busy_timeout; if it is still busy the
        WAL is truncated by the next deletion's checkpoint instead, and we say so in the log.
        """
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning(
                "WAL checkpoint blocked by another reader; deleted data stays in the WAL until the next"
            )

    def checkpoint(self) -> None:
        with self._lock:
            self._checkpoint()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ---- secret -------------------------------------------------------------------------------------

    def server_secret(self) -> bytes:
        """The HMAC key for upload URLs, created once and kept in the data dir so URLs survive restarts."""
        path = self.data_dir / SECRET_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        for _ in range(50):  # another process may have created it a moment ago and not written it yet
            text = path.read_text().strip()
            if text:
                return bytes.fromhex(text)
            time.sleep(0.01)
        raise RuntimeError(f"{path} is empty; delete it to generate a new server secret")

    # ---- keys ---------------------------------------------------------------------------------------

    def create_key(self, developer: str, live: bool = False, now_s: float | None = None) -> str:
        developer = developer.strip()
        if not developer:
            raise ValueError("developer name must not be empty")
        now_s = time.time() if now_s is None else now_s
        key = f"ck_{'live' if live else 'test'}_{secrets.token_hex(24)}"
        key_id = key_id_of(key)
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO developers (name, created_at) VALUES (?, ?)", (developer, now_s)
            )
            (developer_id,) = conn.execute(
                "SELECT id FROM developers WHERE name = ?", (developer,)
            ).fetchone()
            conn.execute(
                "INSERT INTO api_keys (key_id, developer_id, key_hash, live, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, developer_id, hash_key(key), int(live), now_s),
            )
        return key

    def revoke_key(self, key_id: str, now_s: float | None = None) -> None:
        now_s = time.time() if now_s is None else now_s
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT key_id FROM api_keys WHERE key_id = ? OR key_id LIKE ? ESCAPE '\\'",
                (key_id, _like_prefix(key_id)),
            ).fetchall()
            if not rows:
                raise KeyError(f"no API key with id {key_id!r}")
            if len(rows) > 1:
                raise KeyError(f"{key_id!r} matches {len(rows)} keys; give more of the id")
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (now_s, rows[0]["key_id"]),
            )

    def list_keys(self) -> list[KeyInfo]:
        rows = self._read(
            "SELECT k.key_id, d.name, k.live, k.created_at, k.revoked_at FROM api_keys k "
            "JOIN developers d ON d.id = k.developer_id ORDER BY k.created_at, k.key_id"
        )
        return [
            KeyInfo(r["key_id"], r["name"], bool(r["live"]), r["created_at"], r["revoked_at"]) for r in rows
        ]

    def authenticate(self, key: str | None) -> AuthedKey | None:
        """The key's owner, or None for any failure; the caller answers every None with the same 401."""
        key_id = key_id_of(key) if key else None
        candidate = hash_key(key) if key and key.isascii() else hash_key("")
        rows = (
            self._read(
                "SELECT key_id, developer_id, key_hash, revoked_at FROM api_keys WHERE key_id = ?", (key_id,)
            )
            if key_id
            else []
        )
        stored = bytes(rows[0]["key_hash"]) if rows else secrets.token_bytes(32)
        # Compare even when the id is unknown so timing does not tell "no such key" from "wrong key".
        matches = hmac.compare_digest(stored, candidate)
        if not rows or not matches or rows[0]["revoked_at"] is not None:
            return None
        return AuthedKey(key_id=rows[0]["key_id"], developer_id=rows[0]["developer_id"])

    # ---- rate limit and quota -------------------------------------------------------------------------

    def count_request(self, key_id: str, now_s: float, limit: int) -> RateState:
        """Count one request in the key's clock-hour window, unless the window is already spent."""
        window = int(now_s) // RATE_WINDOW_S * RATE_WINDOW_S
        with self._tx() as conn:
            row = conn.execute(
                "SELECT count FROM rate_windows WHERE key_id = ? AND window_start = ?", (key_id, window)
            ).fetchone()
            used = row["count"] if row else 0
            allowed = used < limit
            if allowed:
                used += 1
                conn.execute(
                    "INSERT INTO rate_windows (key_id, window_start, count) VALUES (?, ?, 1) "
                    "ON CONFLICT (key_id, window_start) DO UPDATE SET count = count + 1",
                    (key_id, window),
                )
        return RateState(limit, max(0, limit - used), window + RATE_WINDOW_S, allowed)

    def usage(self, developer_id: int, now_s: float, limit: int) -> UsageState:
        rows = self._read(
            "SELECT count FROM usage WHERE developer_id = ? AND month = ?", (developer_id, month_of(now_s))
        )
        return UsageState(rows[0]["count"] if rows else 0, limit)

    # ---- sessions -------------------------------------------------------------------------------------

    def start_session(
        self,
        *,
        session_id: str,
        key: AuthedKey,
        now_s: float,
        ttl_s: int,
        quota: int,
        demographics: dict[str, Any] | None,
        fallback_config: dict[str, Any],
    ) -> tuple[UsageState, int | None]:
        """Consume one scan of the monthly quota and create the session, atomically.

        Returns the usage after the call and the session's expiry, or None as expiry when the quota was
        already spent (nothing is created or counted then).
        """
        month = month_of(now_s)
        expires_at = int(now_s) + ttl_s
        with self._tx() as conn:
            row = conn.execute(
                "SELECT count FROM usage WHERE developer_id = ? AND month = ?", (key.developer_id, month)
            ).fetchone()
            used = row["count"] if row else 0
            if used >= quota:
                return UsageState(used, quota), None
            conn.execute(
                "INSERT INTO usage (developer_id, month, count) VALUES (?, ?, 1) "
                "ON CONFLICT (developer_id, month) DO UPDATE SET count = count + 1",
                (key.developer_id, month),
            )
            conn.execute(
                "INSERT INTO sessions (id, developer_id, key_id, status, created_at, expires_at, demographics, "
                "fallback_config) VALUES (?, ?, ?, 'created', ?, ?, ?, ?)",
                (
                    session_id,
                    key.developer_id,
                    key.key_id,
                    now_s,
                    expires_at,
                    json.dumps(demographics) if demographics is not None else None,
                    json.dumps(fallback_config),
                ),
            )
        return UsageState(used + 1, quota), expires_at

    def get_session(self, session_id: str) -> SessionRow | None:
        rows = self._read("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return _session(rows[0]) if rows else None

    def transition(
        self, session_id: str, from_status: str, to_status: str, *, require_upload: bool | None = None
    ) -> bool:
        """Compare-and-set the status; False when another request got there first."""
        sql = "UPDATE sessions SET status = ? WHERE id = ? AND status = ?"
        if require_upload is True:
            sql += " AND uploaded_at IS NOT NULL"
        elif require_upload is False:
            sql += " AND uploaded_at IS NULL"
        with self._tx() as conn:
            return conn.execute(sql, (to_status, session_id, from_status)).rowcount == 1

    def finish_upload(self, session_id: str, now_s: float, n_bytes: int) -> bool:
        """Record a stored upload; False if the session expired while it streamed (the caller drops it)."""
        with self._tx() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET uploaded_at = ?, upload_bytes = ? WHERE id = ? AND status = 'uploading'",
                    (now_s, n_bytes, session_id),
                ).rowcount
                == 1
            )

    def store_response(
        self, session_id: str, status: str, response: dict[str, Any], completed_at_s: float
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE sessions SET status = ?, response = ?, completed_at = ? WHERE id = ?",
                (status, json.dumps(response), completed_at_s, session_id),
            )

    def delete_session(self, session_id: str) -> None:
        """Remove every trace of a session: its row, from the WAL too, and its upload."""
        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        self.checkpoint()
        self.blob_path(session_id).unlink(missing_ok=True)

    def blob_path(self, session_id: str, suffix: str = ".bin") -> Path:
        """Where a session's upload lives; only canonical UUIDs, so no id can name a path outside uploads/."""
        if not is_session_id(session_id):
            raise ValueError(f"not a session id: {session_id!r}")
        return self.uploads_dir / f"{session_id}{suffix}"

    def recover_after_restart(self) -> None:
        """Sessions a previous process left mid-flight go back to where a client can retry them."""
        with self._tx() as conn:
            conn.execute("UPDATE sessions SET status = 'uploading' WHERE status = 'processing'")
            conn.execute(
                "UPDATE sessions SET status = 'created' WHERE status = 'uploading' AND uploaded_at IS NULL"
            )
        self.checkpoint()  # a previous process may have died between a deletion and its checkpoint
        for part in self.uploads_dir.glob("*.part"):
            part.unlink(missing_ok=True)

    def sweep(self, now_s: float, retention_s: int) -> int:
        """Expire sessions past their expiry: drop blobs, results and demographics; keep a bare tombstone.

        Sessions being processed are left alone until they finish. Tombstones and old rate windows go
        after `retention_s`. Returns how many sessions expired in this pass.
        """
        with self._tx() as conn:
            expiring = [
                r["id"]
                for r in conn.execute(
                    "SELECT id FROM sessions WHERE expires_at <= ? AND status NOT IN ('expired', 'processing')",
                    (now_s,),
                ).fetchall()
            ]
            conn.execute(
                "UPDATE sessions SET status = 'expired', response = NULL, demographics = NULL "
                "WHERE expires_at <= ? AND status NOT IN ('expired', 'processing')",
                (now_s,),
            )
            removed = conn.execute(
                "DELETE FROM sessions WHERE status = 'expired' AND expires_at <= ?", (now_s - retention_s,)
            ).rowcount
            conn.execute("DELETE FROM rate_windows WHERE window_start < ?", (now_s - 2 * RATE_WINDOW_S,))
        if expiring or removed:
            self.checkpoint()
        for session_id in expiring:
            self.blob_path(session_id).unlink(missing_ok=True)
        return len(expiring)


def is_session_id(text: str) -> bool:
    """Session ids are lowercase canonical UUIDs, as `str(uuid.uuid4())` writes them."""
    return _SESSION_ID.fullmatch(text) is not None


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _session(row: sqlite3.Row) -> SessionRow:
    return SessionRow(
        id=row["id"],
        developer_id=row["developer_id"],
        key_id=row["key_id"],
        status=row["status"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        demographics=json.loads(row["demographics"]) if row["demographics"] else None,
        fallback_config=json.loads(row["fallback_config"]),
        uploaded_at=row["uploaded_at"],
        upload_bytes=row["upload_bytes"],
        response=json.loads(row["response"]) if row["response"] else None,
        completed_at=row["completed_at"],
    )
