"""The PostgreSQL `SessionStore` (psycopg 3 with a connection pool), for several API processes and workers.

Schema changes are versioned SQL in `MIGRATIONS`, applied at start inside one transaction under an
advisory lock, so processes starting together apply each version exactly once (`schema_migrations`
records them).

Counters are exact under concurrency from any number of processes without explicit locks: the check and
the increment are one statement (`INSERT … ON CONFLICT DO UPDATE … WHERE count < limit RETURNING`),
which PostgreSQL runs under the conflicting row's lock, so two processes can never both take the last
request of an hour or the last scan of a month. Status changes are compare-and-set UPDATEs.

Privacy: a deleted row is gone from every query at once, but its bytes stay in the table's heap page
until VACUUM reclaims it and in the WAL until the segment is recycled after a checkpoint. The first
migration makes autovacuum visit `sessions` after every 20 dead rows; docs/deploy.md says how an operator
bounds the WAL side (checkpoint_timeout, max_wal_size, no WAL archiving of this database).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, cast

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Json, Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from contract.sessions import SessionStatus
from server.stores.base import (
    RATE_WINDOW_S,
    AuthedKey,
    KeyInfo,
    NewSession,
    RateState,
    SessionRow,
    StoreUnavailable,
    UsageState,
    hash_key,
    key_id_of,
    month_of,
    rate_window_start,
    transition_statement,
)

# Columns of `sessions` that describe one session; only developer_id, status and expires_at keep stats
# (claim_token, added later, has its statistics turned off by its own migration).
_PRIVATE_COLUMNS: Final = (
    "id",
    "key_id",
    "created_at",
    "demographics",
    "fallback_config",
    "uploaded_at",
    "upload_bytes",
    "response",
    "completed_at",
)
# (version, what it does, SQL). Append only: a released version is never edited.
MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (
        1,
        "developers, keys, sessions, usage, rate windows",
        """
        CREATE TABLE developers (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            developer_id BIGINT NOT NULL REFERENCES developers(id),
            key_hash BYTEA NOT NULL,
            live BOOLEAN NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        );
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            developer_id BIGINT NOT NULL REFERENCES developers(id),
            key_id TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at BIGINT NOT NULL,
            demographics JSONB,
            fallback_config JSONB NOT NULL,
            uploaded_at DOUBLE PRECISION,
            upload_bytes BIGINT,
            response JSONB,
            completed_at DOUBLE PRECISION
        ) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20);
        CREATE INDEX sessions_by_expiry ON sessions(expires_at);
        CREATE TABLE usage (
            developer_id BIGINT NOT NULL,
            month TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (developer_id, month)
        );
        CREATE TABLE rate_windows (
            key_id TEXT NOT NULL,
            window_start BIGINT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (key_id, window_start)
        );
        """,
    ),
    (
        2,
        "responses as json, not jsonb: the answer's key order (the spec's vitals order) is kept",
        "ALTER TABLE sessions ALTER COLUMN response TYPE json USING response::json;",
    ),
    (
        3,
        "no planner statistics of session values: ANALYZE would copy sampled ids, demographics and "
        "timestamps into pg_statistic, where a deleted session's values outlive its row",
        "ALTER TABLE sessions "
        + ", ".join(f"ALTER COLUMN {c} SET STATISTICS 0" for c in _PRIVATE_COLUMNS)
        + ";",
    ),
    (
        4,
        "claim tokens: a request that lost the acknowledgement of its claim can still release it, and a "
        "late release cannot take another request's claim",
        "ALTER TABLE sessions ADD COLUMN claim_token TEXT; "
        "ALTER TABLE sessions ALTER COLUMN claim_token SET STATISTICS 0;",
    ),
)
# A session `processing` this long after its expiry has no job left that could finish it.
STALE_PROCESSING_S: Final = 3600
_MIGRATION_LOCK: Final = 0x76697461  # pg_advisory_xact_lock key shared by every vitalcam process


def apply_migrations(conn: psycopg.Connection[dict[str, Any]]) -> list[int]:
    """Apply the versions not yet recorded, in order; returns those applied now."""
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = {row["version"] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (%s, %s, %s)",
                (version, description, time.time()),
            )
            applied_now.append(version)
    return applied_now


class PostgresSessionStore:
    """Sessions, keys, usage and rate windows in one PostgreSQL database, shared by every process."""

    def __init__(self, database_url: str, *, max_connections: int = 8) -> None:
        self._pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "row_factory": dict_row},
            check=ConnectionPool.check_connection,  # a restarted server's dead connections are replaced
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=30.0)
            with self._pool.connection() as conn:
                apply_migrations(cast("psycopg.Connection[dict[str, Any]]", conn))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._pool.close()
            raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A pooled connection; an unreachable server is StoreUnavailable (the request may be repeated)."""
        try:
            with self._pool.connection(timeout=10.0) as conn:
                # The pool's connections are made with row_factory=dict_row (see __init__).
                yield cast("psycopg.Connection[dict[str, Any]]", conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"PostgreSQL is unreachable: {str(exc)[:200]}") from exc

    # ---- keys ---------------------------------------------------------------------------------------

    def create_key(self, developer: str, live: bool = False, now_s: float | None = None) -> str:
        developer = developer.strip()
        if not developer:
            raise ValueError("developer name must not be empty")
        now_s = time.time() if now_s is None else now_s
        key = f"ck_{'live' if live else 'test'}_{secrets.token_hex(24)}"
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO developers (name, created_at) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
                (developer, now_s),
            ).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO api_keys (key_id, developer_id, key_hash, live, created_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (key_id_of(key), row["id"], hash_key(key), live, now_s),
            )
        return key

    def revoke_key(self, key_id: str, now_s: float | None = None) -> None:
        now_s = time.time() if now_s is None else now_s
        prefix = key_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._conn() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT key_id FROM api_keys WHERE key_id = %s OR key_id LIKE %s", (key_id, prefix)
            ).fetchall()
            if not rows:
                raise KeyError(f"no API key with id {key_id!r}")
            if len(rows) > 1:
                raise KeyError(f"{key_id!r} matches {len(rows)} keys; give more of the id")
            conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL",
                (now_s, rows[0]["key_id"]),
            )

    def list_keys(self) -> list[KeyInfo]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT k.key_id, d.name, k.live, k.created_at, k.revoked_at FROM api_keys k "
                "JOIN developers d ON d.id = k.developer_id ORDER BY k.created_at, k.key_id"
            ).fetchall()
        return [
            KeyInfo(r["key_id"], r["name"], bool(r["live"]), r["created_at"], r["revoked_at"]) for r in rows
        ]

    def authenticate(self, key: str | None) -> AuthedKey | None:
        """The key's owner, or None for any failure (compared even for unknown ids: no timing tell)."""
        key_id = key_id_of(key) if key else None
        candidate = hash_key(key) if key and key.isascii() else hash_key("")
        row = None
        if key_id:
            with self._conn() as conn:
                row = conn.execute(
                    "SELECT key_id, developer_id, key_hash, revoked_at FROM api_keys WHERE key_id = %s",
                    (key_id,),
                ).fetchone()
        stored = bytes(row["key_hash"]) if row else secrets.token_bytes(32)
        matches = hmac.compare_digest(stored, candidate)
        if row is None or not matches or row["revoked_at"] is not None:
            return None
        return AuthedKey(key_id=row["key_id"], developer_id=int(row["developer_id"]))

    # ---- rate limit and quota -------------------------------------------------------------------------

    def count_request(self, key_id: str, now_s: float, limit: int) -> RateState:
        """Count one request in the key's clock-hour window unless it is spent: one atomic statement."""
        window = rate_window_start(now_s)
        with self._conn() as conn:
            row = conn.execute(
                "INSERT INTO rate_windows AS r (key_id, window_start, count) VALUES (%s, %s, 1) "
                "ON CONFLICT (key_id, window_start) DO UPDATE SET count = r.count + 1 WHERE r.count < %s "
                "RETURNING count",
                (key_id, window, limit),
            ).fetchone()
            if row is None:
                allowed, used = False, limit
            else:
                allowed, used = True, int(row["count"])
        return RateState(limit, max(0, limit - used), window + RATE_WINDOW_S, allowed)

    def usage(self, developer_id: int, now_s: float, limit: int) -> UsageState:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT count FROM usage WHERE developer_id = %s AND month = %s",
                (developer_id, month_of(now_s)),
            ).fetchone()
        return UsageState(int(row["count"]) if row else 0, limit)

    # ---- sessions -------------------------------------------------------------------------------------

    def start_session(self, new: NewSession, quota: int) -> tuple[UsageState, int | None]:
        month = month_of(new.now_s)
        expires_at = int(new.now_s) + new.ttl_s
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO usage AS u (developer_id, month, count) VALUES (%s, %s, 1) "
                "ON CONFLICT (developer_id, month) DO UPDATE SET count = u.count + 1 WHERE u.count < %s "
                "RETURNING count",
                (new.key.developer_id, month, quota),
            ).fetchone()
            if row is None:
                return UsageState(quota, quota), None
            conn.execute(
                "INSERT INTO sessions (id, developer_id, key_id, status, created_at, expires_at, demographics, "
                "fallback_config) VALUES (%s, %s, %s, 'created', %s, %s, %s, %s)",
                (
                    new.session_id,
                    new.key.developer_id,
                    new.key.key_id,
                    new.now_s,
                    expires_at,
                    Jsonb(new.demographics) if new.demographics is not None else None,
                    Jsonb(new.fallback_config),
                ),
            )
        return UsageState(int(row["count"]), quota), expires_at

    def get_session(self, session_id: str) -> SessionRow | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM sessions WHERE id = %s", (session_id,)).fetchone()
        return _session(row) if row else None

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
        sql, params = transition_statement(
            session_id,
            from_status,
            to_status,
            require_upload=require_upload,
            claim=claim,
            holder=holder,
            mark="%s",
        )
        with self._conn() as conn:
            return conn.execute(sql, params).rowcount == 1

    def finish_upload(self, session_id: str, now_s: float, n_bytes: int, *, claim: str) -> bool:
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET uploaded_at = %s, upload_bytes = %s "
                    "WHERE id = %s AND status = 'uploading' AND claim_token = %s",
                    (now_s, n_bytes, session_id, claim),
                ).rowcount
                == 1
            )

    def record_direct_upload(self, session_id: str, now_s: float, n_bytes: int) -> bool:
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET status = 'uploading', uploaded_at = %s, upload_bytes = %s "
                    "WHERE id = %s AND status = 'created' AND uploaded_at IS NULL",
                    (now_s, n_bytes, session_id),
                ).rowcount
                == 1
            )

    def release_upload(self, session_id: str, *, claim: str) -> bool:
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET status = 'created', uploaded_at = NULL, upload_bytes = NULL, "
                    "claim_token = NULL WHERE id = %s AND status = 'uploading' AND claim_token = %s",
                    (session_id, claim),
                ).rowcount
                == 1
            )

    def store_response(
        self, session_id: str, status: SessionStatus, response: dict[str, Any], completed_at_s: float
    ) -> bool:
        with self._conn() as conn:
            return (
                conn.execute(
                    "UPDATE sessions SET status = %s, response = %s, completed_at = %s "
                    "WHERE id = %s AND status = 'processing'",
                    (status.value, Json(response), completed_at_s, session_id),
                ).rowcount
                == 1
            )

    def delete_session(self, session_id: str) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM sessions WHERE id = %s", (session_id,))

    def recover_after_restart(self) -> None:
        """Single-process deployments only: several processes share this database, and one process's
        restart must not reset sessions another is working on (the queue retries dead workers' jobs)."""
        with self._conn() as conn, conn.transaction():
            conn.execute(
                "UPDATE sessions SET status = 'uploading', claim_token = NULL WHERE status = 'processing'"
            )
            conn.execute(
                "UPDATE sessions SET status = 'created', claim_token = NULL "
                "WHERE status = 'uploading' AND uploaded_at IS NULL"
            )

    def sweep(self, now_s: float, retention_s: int) -> list[str]:
        """As the protocol says, and also sessions still `processing` STALE_PROCESSING_S after expiry:
        with several processes no restart recovers them, and a job that failed both its tries (or an API
        process that died waiting) would otherwise keep the row, demographics and all, for ever."""
        with self._conn() as conn, conn.transaction():
            expiring = [
                r["id"]
                for r in conn.execute(
                    "UPDATE sessions SET status = 'expired', response = NULL, demographics = NULL "
                    "WHERE expires_at <= %s AND status <> 'expired' "
                    "AND (status <> 'processing' OR expires_at <= %s) RETURNING id",
                    (now_s, now_s - STALE_PROCESSING_S),
                ).fetchall()
            ]
            conn.execute(
                "DELETE FROM sessions WHERE status = 'expired' AND expires_at <= %s", (now_s - retention_s,)
            )
            conn.execute("DELETE FROM rate_windows WHERE window_start < %s", (now_s - 2 * RATE_WINDOW_S,))
        return expiring


def _session(row: dict[str, Any]) -> SessionRow:
    return SessionRow(
        id=row["id"],
        developer_id=int(row["developer_id"]),
        key_id=row["key_id"],
        status=SessionStatus(row["status"]),
        created_at=row["created_at"],
        expires_at=int(row["expires_at"]),
        demographics=row["demographics"],
        fallback_config=row["fallback_config"],
        uploaded_at=row["uploaded_at"],
        upload_bytes=row["upload_bytes"],
        response=row["response"],
        completed_at=row["completed_at"],
        claim_token=row["claim_token"],
    )
