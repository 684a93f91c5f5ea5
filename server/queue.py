"""Inference on `vitalcam worker` processes, over arq (asyncio jobs on Redis).

Why arq: the API is asyncio already, and arq's worker keeps a job in its queue until the job has finished,
guarding each running job with an in-progress key that expires `job_timeout_s + 10 s` after it was taken.
A worker killed mid-job therefore loses nothing: once the key expires, another worker takes the same job
again (`max_tries=2`: the first try and one retry). Procrastinate on PostgreSQL was the other candidate; it
leaves a dead worker's job "doing" until something retries stalled jobs by hand.

What goes through Redis is the session id and nothing else; results are not kept (`keep_result=0`), and
the Redis of docs/deploy.md runs without snapshots or an append-only file, so no queue entry reaches a
disk. The worker reads the tensor from the blob store and writes the outcome into the session row (a
compare-and-set on `processing`); the API process that enqueued the job waits for that row to change, and
then answers and (PERSIST_VITALS=false) deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func

from contract import errors as codes
from contract.sessions import RESULT_STATUSES, SessionStatus
from server.config import ServerConfig
from server.errors import ApiError
from server.processing import InferFn, Outcome, default_infer, fallback_body, process_upload
from server.stores import open_blob_store, open_session_store
from server.stores.base import BlobStore, SessionRow, SessionStore, StoreUnavailable

log = logging.getLogger("vitalcam.server")

JOB_NAME: Final = "vitalcam_infer"
WORKER_READY: Final = "inference worker ready"
MAX_TRIES: Final = 2
DEFAULT_JOB_TIMEOUT_S: Final = 120.0
_POLL_FIRST_S: Final = 0.02
_POLL_MAX_S: Final = 0.25
_REQUEUE_S: Final = 3.0
_STORE_RETRY_MAX_S: Final = 2.0


class ResultPending(ApiError):
    """The wait for a queued inference ran out; the session stays `processing` and the job keeps going."""

    def __init__(self, waited_s: float) -> None:
        code = codes.RESULT_PENDING
        super().__init__(
            code.http_status,
            code.code,
            f"Inference still running after {waited_s:g} s; repeat upload-complete or poll the result",
            retryable=code.retryable,
            headers={"Retry-After": "2"},
        )


class QueueRunner:
    """Enqueue on upload-complete, then wait (within `result_wait_s`) for a worker to store the outcome."""

    stores_outcome = True

    def __init__(self, config: ServerConfig, sessions: SessionStore) -> None:
        if not config.queue_url:
            raise ValueError("QueueRunner needs queue_url")
        self._config = config
        self._settings = RedisSettings.from_dsn(config.queue_url)
        self._sessions = sessions
        self._pool: ArqRedis | None = None

    async def _redis(self) -> ArqRedis:
        if self._pool is None:
            try:
                self._pool = await create_pool(self._settings, retry=0)
            except Exception as exc:
                raise StoreUnavailable(f"queue unreachable: {exc}") from exc
        return self._pool

    async def run(self, session: SessionRow, max_bytes: int) -> Outcome:
        await self._enqueue(session.id)
        return await self._wait(session, self._config.result_wait_s)

    async def _enqueue(self, session_id: str) -> None:
        """Queue the session's job. The session id is the job id, so while a job for it is queued or
        running (a retry included) this adds nothing: repeating it is always safe."""
        pool = await self._redis()
        try:
            await pool.enqueue_job(JOB_NAME, session_id, _job_id=session_id)
        except Exception as exc:
            raise StoreUnavailable(f"queue unreachable: {exc}") from exc

    async def wait_elsewhere(self, session_id: str) -> Outcome | None:
        session = await asyncio.to_thread(self._sessions.get_session, session_id)
        if session is None:
            return None
        return await self._wait(session, self._config.result_wait_s)

    async def _wait(self, session: SessionRow, wait_s: float) -> Outcome:
        """Poll the session row until a worker has stored the outcome, or `wait_s` has passed.

        The job is queued again (a no-op while it exists) every few seconds, so a job that never reached
        the queue or was lost with it (Redis keeps no queue on disk, so its restart empties it) is
        queued again rather than waited for in vain. A database that is down for a moment is waited out;
        down at the deadline, the answer is 503 SERVICE_UNAVAILABLE and the outcome is kept for the
        client's retry.
        """
        started_s = time.monotonic()
        deadline_s = started_s + wait_s
        requeue_at_s = started_s  # also at once: the caller may be retrying after a lost enqueue
        delay_s = _POLL_FIRST_S
        unavailable: StoreUnavailable | None = None
        while True:
            if time.monotonic() >= requeue_at_s:
                requeue_at_s = time.monotonic() + _REQUEUE_S
                with contextlib.suppress(StoreUnavailable):
                    await self._enqueue(session.id)
            try:
                row = await asyncio.to_thread(self._sessions.get_session, session.id)
                unavailable = None
            except StoreUnavailable as exc:
                unavailable, row = exc, None
            if unavailable is None:
                if row is None:
                    raise ApiError.of(codes.SESSION_NOT_FOUND, "Session not found")
                if row.response is not None and row.status in RESULT_STATUSES:
                    return Outcome(body=row.response, measured=row.status == SessionStatus.COMPLETED)
            if time.monotonic() >= deadline_s:
                break
            await asyncio.sleep(delay_s)
            delay_s = min(_POLL_MAX_S, delay_s * 1.5)
        if unavailable is not None:
            raise unavailable
        if self._config.persist_vitals:
            raise ResultPending(wait_s)
        return _timed_out(session, wait_s)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


def _timed_out(session: SessionRow, wait_s: float) -> Outcome:
    """PERSIST_VITALS=false cannot leave the answer for later: fallback vitals that say why."""
    return fallback_body(
        session.id,
        session.fallback_config,
        "INFERENCE_TIMEOUT",
        f"no inference worker finished within {wait_s:g} s; returning fallback vitals",
    )


# ---- the worker ---------------------------------------------------------------------------------------


async def infer_session(ctx: dict[str, Any], session_id: str) -> None:
    """One job: run inference on a `processing` session's tensor and store the outcome in its row."""
    sessions: SessionStore = ctx["sessions"]
    blobs: BlobStore = ctx["blobs"]
    infer: InferFn = ctx["infer"]
    max_bytes: int = ctx["max_bytes"]
    deadline_s = time.monotonic() + ctx["store_wait_s"]
    await asyncio.to_thread(_infer_session, sessions, blobs, infer, max_bytes, session_id, deadline_s)


def _infer_session(
    sessions: SessionStore,
    blobs: BlobStore,
    infer: InferFn,
    max_bytes: int,
    session_id: str,
    deadline_s: float,
) -> None:
    session = _retrying(lambda: sessions.get_session(session_id), deadline_s)
    if session is None or session.status != SessionStatus.PROCESSING:
        return  # answered already (e.g. timed out and deleted): nothing to do, and nothing to keep
    payload = _retrying(lambda: blobs.read(session_id, max_bytes), deadline_s)
    if payload is None:
        return
    outcome = process_upload(session_id, payload, session.demographics, session.fallback_config, infer)
    status = SessionStatus.COMPLETED if outcome.measured else SessionStatus.FAILED
    _retrying(lambda: sessions.store_response(session_id, status, outcome.body, time.time()), deadline_s)
    # The tensor is not needed once the outcome is stored, whoever answers the client and whenever.
    _retrying(lambda: blobs.delete(session_id), deadline_s)


T = TypeVar("T")


def _retrying(action: Callable[[], T], deadline_s: float) -> T:
    """A store call, repeated while the store is unreachable (a PostgreSQL restart, an S3 blip) until
    `deadline_s`: arq does not retry a job that raised, and the API is still waiting for this one."""
    delay_s = 0.2
    while True:
        try:
            return action()
        except StoreUnavailable as exc:
            if time.monotonic() + delay_s >= deadline_s:
                raise
            log.warning("store unavailable in an inference job, retrying in %.1f s: %s", delay_s, exc)
            time.sleep(delay_s)
            delay_s = min(_STORE_RETRY_MAX_S, delay_s * 2)


def make_worker(
    config: ServerConfig,
    *,
    infer: InferFn | None = None,
    job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
    concurrency: int = 1,
    burst: bool = False,
) -> Worker:
    """An arq worker for `vitalcam worker`; its stores come from the same configuration as the API's."""
    if not config.queue_url:
        raise ValueError("a worker needs a queue URL (--queue redis://... or VITALCAM_QUEUE_URL)")

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["sessions"] = open_session_store(config)
        ctx["blobs"] = open_blob_store(config)
        ctx["infer"] = infer or default_infer
        ctx["max_bytes"] = config.max_upload_bytes
        # Store retries end before arq's job timeout would cancel the job.
        ctx["store_wait_s"] = max(1.0, job_timeout_s - 2.0)
        log.info("%s (%d at a time, job timeout %g s)", WORKER_READY, concurrency, job_timeout_s)

    async def shutdown(ctx: dict[str, Any]) -> None:
        for name in ("blobs", "sessions"):
            if name in ctx:
                ctx[name].close()

    return Worker(
        functions=[func(infer_session, name=JOB_NAME, max_tries=MAX_TRIES, keep_result=0)],
        redis_settings=RedisSettings.from_dsn(config.queue_url),
        on_startup=startup,
        on_shutdown=shutdown,
        job_timeout=job_timeout_s,
        max_jobs=concurrency,
        keep_result=0,
        max_tries=MAX_TRIES,
        burst=burst,
        handle_signals=True,
        poll_delay=0.05,
    )


def run_worker(
    config: ServerConfig, *, job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S, concurrency: int = 1
) -> None:
    """Run a worker until SIGINT/SIGTERM (a job in progress is finished first when possible).

    Its own messages (ready, store retries, crashes) go to stderr; arq's per-job lines do not, as they
    would name session ids.
    """
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    make_worker(config, job_timeout_s=job_timeout_s, concurrency=concurrency).run()
