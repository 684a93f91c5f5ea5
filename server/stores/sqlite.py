"""The SQLite `SessionStore`: the embedded default, one file in the data directory.

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

import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from contract.sessions import SessionStatus
from server.stores.base import (
    RATE_WINDOW_S,
    AuthedKey,
    KeyInfo,
    NewSession,
    RateState,
    SessionRow,
    UsageState,
    hash_key,
    key_id_of,
    month_of,
    rate_window_start,
    transition_statement,
)

log = logging.getLogger("vitalcam.server")

DB_NAME: Final = "vitalcam.sqlite3"

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
    completed_at REAL,
    claim_token TEXT
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


class SqliteSessionStore:
    """Sessions, keys, usage and rate windows in `data_dir/vitalcam.sqlite3`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
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
            _add_missing_columns(self._conn)

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
        window = rate_window_start(now_s)
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

    def start_session(self, new: NewSession, quota: int) -> tuple[UsageState, int | None]:
        """Consume one scan of the monthly quota and create the session, atomically.

        Returns the usage after the call and the session's expiry, or None as expiry when the quota was
        already spent (nothing is created or counted then).
        """
        month = month_of(new.now_s)
        expires_at = int(new.now_s) + new.ttl_s
        developer_id = new.key.developer_id
        with self._tx() as conn:
            row = conn.execute(
                "SELECT count FROM usage WHERE developer_id = ? AND month = ?", (developer_id, month)
            ).fetchone()
            used = row["count"] if row else 0
            if used >= quota:
                return UsageState(used, quota), None
            conn.execute(
                "INSERT INTO usage (developer_id, month, count) VALUES (?, ?, 1) "
                "ON CONFLICT (developer_id, month) DO UPDATE SET count = count + 1",
                (developer_id, month),
            )
            conn.execute(
                "INSERT INTO sessions (id, developer_id, key_id, status, created_at, expires_at, demographics, "
                "fallback_config) VALUES (?, ?, ?, 'created', ?, ?, ?, ?)",
                (
                    new.session_id,
                    developer_id,
                    new.key.key_id,
                    new.now_s,
                    expires_at,
                    json.dumps(new.demographics) if new.demographics is not None else None,
                    json.dumps(new.fallback_config),
                ),
            )
        return UsageState(used + 1, quota), expires_at

    def get_session(self, session_id: str) -> SessionRow | None:
        rows = self._read("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return _session(rows[0]) if rows else None

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
        """Compare-and-set the status; False when another request got there first."""
        sql, params = transition_statement(
            session_id,
            from_status,
            to_status,
            require_upload=require_upload,
            claim=claim,
            holder=holder,
            mark="?",
        )
        with self._tx() as conn:
            return conn.execute(sql, params).rowcount == 1

    def finish_upload(self, session_id: str, now_s: float, n_bytes: int, *, claim: str) -> bool:
        """Record a stored upload; False if the session expired while it streamed (the caller drops it)."""
        with self._tx() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET uploaded_at = ?, upload_bytes = ? "
                    "WHERE id = ? AND status = 'uploading' AND claim_token = ?",
                    (now_s, n_bytes, session_id, claim),
                ).rowcount
                == 1
            )

    def record_direct_upload(self, session_id: str, now_s: float, n_bytes: int) -> bool:
        with self._tx() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET status = 'uploading', uploaded_at = ?, upload_bytes = ? "
                    "WHERE id = ? AND status = 'created' AND uploaded_at IS NULL",
                    (now_s, n_bytes, session_id),
                ).rowcount
                == 1
            )

    def release_upload(self, session_id: str, *, claim: str) -> bool:
        with self._tx() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET status = 'created', uploaded_at = NULL, upload_bytes = NULL, "
                    "claim_token = NULL WHERE id = ? AND status = 'uploading' AND claim_token = ?",
                    (session_id, claim),
                ).rowcount
                == 1
            )

    def store_response(
        self, session_id: str, status: SessionStatus, response: dict[str, Any], completed_at_s: float
    ) -> bool:
        with self._tx() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET status = ?, response = ?, completed_at = ? "
                    "WHERE id = ? AND status = 'processing'",
                    (status.value, json.dumps(response), completed_at_s, session_id),
                ).rowcount
                == 1
            )

    def delete_session(self, session_id: str) -> None:
        """Remove the row, from the WAL too (secure_delete zeroes the page, the checkpoint the WAL)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        self.checkpoint()

    def recover_after_restart(self) -> None:
        """Sessions a previous process left mid-flight go back to where a client can retry them."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE sessions SET status = 'uploading', claim_token = NULL WHERE status = 'processing'"
            )
            conn.execute(
                "UPDATE sessions SET status = 'created', claim_token = NULL "
                "WHERE status = 'uploading' AND uploaded_at IS NULL"
            )
        self.checkpoint()  # a previous process may have died between a deletion and its checkpoint

    def sweep(self, now_s: float, retention_s: int) -> list[str]:
        """Expire sessions past their expiry: drop blobs, results and demographics; keep a bare tombstone.

        Sessions being processed are left alone until they finish. Tombstones and old rate windows go
        after `retention_s`. Returns the sessions expired in this pass.
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
        return expiring


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _session(row: sqlite3.Row) -> SessionRow:
    return SessionRow(
        id=row["id"],
        developer_id=row["developer_id"],
        key_id=row["key_id"],
        status=SessionStatus(row["status"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        demographics=json.loads(row["demographics"]) if row["demographics"] else None,
        fallback_config=json.loads(row["fallback_config"]),
        uploaded_at=row["uploaded_at"],
        upload_bytes=row["upload_bytes"],
        response=json.loads(row["response"]) if row["response"] else None,
        completed_at=row["completed_at"],
        claim_token=row["claim_token"],
    )


# Columns added after the first release, with their type: a database written by an older version gets
# them on open (SQLite's ALTER TABLE ADD COLUMN is cheap: existing rows read NULL).
_ADDED_COLUMNS: Final = (("sessions", "claim_token", "TEXT"),)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, column, kind in _ADDED_COLUMNS:
        present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
