"""The storage contract, run against every implementation: SQLite and PostgreSQL `SessionStore`s, folder
and S3 `BlobStore`s. A new store is one class plus one fixture branch here."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.sessions import SessionStatus as S
from server.stores.base import BlobStore, NewSession, SessionStore
from tests import services

pytestmark = pytest.mark.timeout(120)
TRUNCATE = "TRUNCATE sessions, usage, rate_windows, api_keys, developers CASCADE"


@pytest.fixture(scope="module")
def pg() -> Iterator[services.Postgres]:
    with services.postgres() as server:
        yield server


@pytest.fixture(scope="module")
def s3() -> Iterator[services.S3Server]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    with services.s3_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    store: SessionStore
    if request.param == "sqlite":
        from server.stores.sqlite import SqliteSessionStore

        store = SqliteSessionStore(tmp_path)
    else:
        from server.stores.postgres import PostgresSessionStore

        server = request.getfixturevalue("pg")
        store = PostgresSessionStore(server.url)  # applies the migrations on first use
        server.psql(TRUNCATE)
    yield store
    store.close()


@pytest.fixture(params=["files", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    store: BlobStore
    if request.param == "files":
        from server.stores.files import FileBlobStore

        store = FileBlobStore(tmp_path)
    else:
        from server.stores.s3 import S3BlobStore

        server = request.getfixturevalue("s3")
        store = S3BlobStore.from_url(server.blob_store_url(f"b{uuid.uuid4().hex[:12]}"), ttl_s=60)
    yield store
    store.close()


def new_session(store: SessionStore, key: str, **kwargs: Any) -> NewSession:
    authed = store.authenticate(key)
    assert authed is not None
    return NewSession(
        session_id=str(uuid.uuid4()),
        key=authed,
        now_s=kwargs.get("now_s", time.time()),
        ttl_s=kwargs.get("ttl_s", 1800),
        demographics={"age": 40},
        fallback_config={"confidence": 0.0},
    )


def test_keys_authenticate_and_revoke(sessions: SessionStore) -> None:
    key = sessions.create_key("acme")
    authed = sessions.authenticate(key)
    assert authed is not None and key.startswith(authed.key_id)
    assert sessions.authenticate(key[:-1] + ("0" if key[-1] != "0" else "1")) is None
    assert sessions.authenticate(None) is None
    sessions.revoke_key(authed.key_id)
    assert sessions.authenticate(key) is None
    assert [k.active for k in sessions.list_keys()] == [False]


def test_quota_and_rate_limit_stop_exactly_at_the_limit(sessions: SessionStore) -> None:
    key = sessions.create_key("acme")
    outcomes = [sessions.start_session(new_session(sessions, key), quota=3)[1] for _ in range(5)]
    assert [e is not None for e in outcomes] == [True, True, True, False, False]
    authed = sessions.authenticate(key)
    assert authed is not None
    assert sessions.usage(authed.developer_id, time.time(), 3).current == 3
    allowed = [sessions.count_request(authed.key_id, time.time(), 2).allowed for _ in range(4)]
    assert allowed == [True, True, False, False]


def test_transitions_are_compare_and_set(sessions: SessionStore) -> None:
    key = sessions.create_key("acme")
    new = new_session(sessions, key)
    sessions.start_session(new, quota=10)
    sid = new.session_id
    assert sessions.transition(sid, S.CREATED, S.UPLOADING, require_upload=False, claim="put-1")
    assert not sessions.transition(sid, S.CREATED, S.UPLOADING, require_upload=False, claim="put-2")
    assert not sessions.transition(sid, S.UPLOADING, S.PROCESSING, require_upload=True)
    assert not sessions.finish_upload(sid, time.time(), 123, claim="put-2")  # not the claimant
    assert sessions.finish_upload(sid, time.time(), 123, claim="put-1")
    assert sessions.transition(sid, S.UPLOADING, S.PROCESSING, require_upload=True)
    assert sessions.store_response(sid, S.COMPLETED, {"vitals": {"heart_rate": 70}}, time.time())
    assert not sessions.store_response(sid, S.FAILED, {"vitals": {}}, time.time())  # settled already
    row = sessions.get_session(sid)
    assert row is not None and row.status == S.COMPLETED and row.response == {"vitals": {"heart_rate": 70}}
    assert row.demographics == {"age": 40} and row.upload_bytes == 123
    sessions.delete_session(sid)
    assert sessions.get_session(sid) is None


def test_a_direct_upload_is_claimed_and_recorded_in_one_step(sessions: SessionStore) -> None:
    """A store dropping between a claim and its record must not leave the session half-claimed."""
    key = sessions.create_key("acme")
    new = new_session(sessions, key)
    sessions.start_session(new, quota=10)
    sid = new.session_id
    assert sessions.record_direct_upload(sid, time.time(), 77)
    row = sessions.get_session(sid)
    assert row is not None and row.status == S.UPLOADING and row.uploaded_at is not None
    assert row.upload_bytes == 77
    assert not sessions.record_direct_upload(sid, time.time(), 78)  # recorded once: a second call is refused
    assert sessions.transition(sid, S.UPLOADING, S.PROCESSING, require_upload=True)
    assert not sessions.record_direct_upload(sid, time.time(), 79)
    row = sessions.get_session(sid)
    assert row is not None and row.status == S.PROCESSING and row.upload_bytes == 77


def test_only_the_claimant_releases_a_claim(sessions: SessionStore) -> None:
    """A release that comes late (its request lost the database's acknowledgement and tried again) must
    not undo the claim a newer request has made since: releases name the claim they release."""
    key = sessions.create_key("acme")
    new = new_session(sessions, key)
    sessions.start_session(new, quota=10)
    sid = new.session_id
    assert sessions.transition(sid, S.CREATED, S.UPLOADING, require_upload=False, claim="put-1")
    assert sessions.finish_upload(sid, time.time(), 5, claim="put-1")
    assert sessions.release_upload(sid, claim="put-1")
    row = sessions.get_session(sid)
    assert row is not None and row.status == S.CREATED and row.claim_token is None
    assert row.uploaded_at is None and row.upload_bytes is None  # released with its upload forgotten
    assert sessions.transition(sid, S.CREATED, S.UPLOADING, require_upload=False, claim="put-2")
    assert not sessions.release_upload(sid, claim="put-1")  # the late release of the first PUT
    assert sessions.finish_upload(sid, time.time(), 6, claim="put-2")
    row = sessions.get_session(sid)
    assert row is not None and row.status == S.UPLOADING and row.claim_token == "put-2"
    assert sessions.transition(sid, S.UPLOADING, S.PROCESSING, require_upload=True, claim="run-1")
    assert not sessions.transition(sid, S.PROCESSING, S.UPLOADING, holder="run-0")
    assert sessions.transition(sid, S.PROCESSING, S.UPLOADING, holder="run-1")
    row = sessions.get_session(sid)
    assert row is not None and row.status == S.UPLOADING and row.claim_token is None
    assert row.upload_bytes == 6  # the tensor stays recorded for the next run


def test_a_sqlite_database_written_before_claim_tokens_gains_the_column(tmp_path: Path) -> None:
    """An existing data directory keeps working after the upgrade: the column is added on open."""
    import sqlite3

    from server.stores import sqlite as sqlite_store

    before = sqlite_store._SCHEMA.replace(",\n    claim_token TEXT", "")
    assert before != sqlite_store._SCHEMA
    with sqlite3.connect(tmp_path / sqlite_store.DB_NAME) as conn:
        conn.executescript(before)
    store = sqlite_store.SqliteSessionStore(tmp_path)
    new = new_session(store, store.create_key("acme"))
    store.start_session(new, quota=10)
    assert store.transition(new.session_id, S.CREATED, S.UPLOADING, require_upload=False, claim="put")
    row = store.get_session(new.session_id)
    assert row is not None and row.claim_token == "put"
    store.close()


def test_sweep_expires_and_drops_results(sessions: SessionStore) -> None:
    key = sessions.create_key("acme")
    old = new_session(sessions, key, now_s=time.time() - 100, ttl_s=10)
    fresh = new_session(sessions, key)
    sessions.start_session(old, quota=10)
    sessions.start_session(fresh, quota=10)
    assert sessions.sweep(time.time(), retention_s=3600) == [old.session_id]
    row = sessions.get_session(old.session_id)
    assert row is not None and row.status == S.EXPIRED and row.demographics is None
    assert sessions.sweep(time.time() + 7200, retention_s=60) == [fresh.session_id]
    assert sessions.get_session(old.session_id) is None  # the tombstone outlived its retention


def test_postgres_sweep_expires_sessions_stuck_in_processing(pg: services.Postgres) -> None:
    """A job that failed both tries leaves its session `processing`; an hour past expiry it goes."""
    from server.stores.postgres import STALE_PROCESSING_S, PostgresSessionStore

    store = PostgresSessionStore(pg.url)
    pg.psql(TRUNCATE)
    key = store.create_key("acme")
    new = new_session(store, key, now_s=time.time() - 100, ttl_s=10)
    store.start_session(new, quota=10)
    assert store.transition(new.session_id, S.CREATED, S.UPLOADING, require_upload=False, claim="put")
    assert store.finish_upload(new.session_id, time.time(), 10, claim="put")
    assert store.transition(new.session_id, S.UPLOADING, S.PROCESSING, require_upload=True)
    assert store.sweep(time.time(), retention_s=86400) == []  # maybe still running: left alone
    assert store.sweep(time.time() + STALE_PROCESSING_S, retention_s=86400) == [new.session_id]
    row = store.get_session(new.session_id)
    assert row is not None and row.status == S.EXPIRED and row.demographics is None
    store.close()


def test_postgres_keeps_no_statistics_of_session_values(pg: services.Postgres) -> None:
    """ANALYZE samples column values into pg_statistic; for a session's own columns it must not."""
    from server.stores.postgres import PostgresSessionStore

    store = PostgresSessionStore(pg.url)
    pg.psql(TRUNCATE)
    key = store.create_key("acme")
    for _ in range(30):
        store.start_session(new_session(store, key), quota=100)
    pg.psql("ANALYZE sessions")
    columns = pg.psql("SELECT attname FROM pg_stats WHERE tablename = 'sessions' ORDER BY attname").split()
    assert columns == ["developer_id", "expires_at", "status"]
    store.close()


def test_blobs_write_read_delete(blobs: BlobStore) -> None:
    sid = str(uuid.uuid4())
    assert blobs.read(sid, 1000) is None
    with blobs.writer(sid) as writer:
        writer.write(b"abc")
        writer.write(b"def")
    assert blobs.read(sid, 1000) is None  # never committed: nothing visible
    with blobs.writer(sid) as writer:
        writer.write(b"tensor-bytes")
        writer.commit()
    assert blobs.read(sid, 1000) == b"tensor-bytes"
    with pytest.raises(ValueError, match="limit"):
        blobs.read(sid, 5)
    blobs.delete(sid)
    blobs.delete(sid)  # idempotent
    assert blobs.read(sid, 1000) is None
    with pytest.raises(ValueError):
        blobs.writer("../../etc/passwd").__enter__()


def test_s3_presigned_put_reaches_exactly_the_sessions_object(s3: services.S3Server) -> None:
    import httpx

    from server.stores.s3 import LIFECYCLE_RULE_ID, S3BlobStore

    store = S3BlobStore.from_url(s3.blob_store_url("presign-test"), ttl_s=60)
    sid = str(uuid.uuid4())
    url = store.presigned_put_url(sid, int(time.time()) + 60, 1000)
    assert url is not None and sid in url and "X-Amz-Signature" in url
    assert (
        httpx.put(url, content=b"through-presigned", headers={"Content-Type": "video/webm"}).status_code
        == 200
    )
    assert store.read(sid, 1000) == b"through-presigned"
    # moto does not verify SigV4 signatures, so that the signature binds the key is not testable here;
    # the URL's path is the session's object and nothing else.
    assert httpx.URL(url).path == f"/presign-test/uploads/{sid}.bin"
    rules = store._s3.get_bucket_lifecycle_configuration(Bucket="presign-test")["Rules"]
    assert [r["ID"] for r in rules] == [LIFECYCLE_RULE_ID] and rules[0]["Expiration"]["Days"] == 1
    store.delete(sid)
    store.close()


def _race_starts(url: str, key: str, n: int, quota: int, results: Any) -> None:
    from server.stores.postgres import PostgresSessionStore

    store = PostgresSessionStore(url)
    ok = 0
    allowed = 0
    for _ in range(n):
        ok += store.start_session(new_session(store, key), quota=quota)[1] is not None
        authed = store.authenticate(key)
        assert authed is not None
        allowed += store.count_request(authed.key_id, time.time(), quota).allowed
    results.put((ok, allowed))
    store.close()


def test_postgres_quota_and_rate_limit_are_exact_across_processes(pg: services.Postgres) -> None:
    """Four processes race for the last scans and requests: exactly `quota` of each succeed."""
    from server.stores.postgres import PostgresSessionStore

    admin = PostgresSessionStore(pg.url)
    pg.psql(TRUNCATE)
    key = admin.create_key("racer")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    quota, n_processes, per_process = 37, 4, 25
    processes = [
        context.Process(target=_race_starts, args=(pg.url, key, per_process, quota, results))
        for _ in range(n_processes)
    ]
    for p in processes:
        p.start()
    totals = [results.get(timeout=90) for _ in processes]
    for p in processes:
        p.join(30)
    assert sum(ok for ok, _ in totals) == quota
    assert sum(allowed for _, allowed in totals) == quota
    assert pg.psql("SELECT count(*) FROM sessions").strip() == str(quota)
    admin.close()
