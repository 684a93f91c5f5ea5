"""The session service: the sessions API's rules, with no HTTP in them.

It owns the state machine (every change of status goes through `contract.sessions.TRANSITIONS` and then
the store's compare-and-set, so two requests, or two processes, can never both win the same step), the
in-flight de-duplication of upload-complete (concurrent calls in this process wait for the one running
inference), quota and rate limits, upload URLs and the privacy deletions. Routers translate HTTP to these
calls; stores and the inference runner are injected, so the same rules run over SQLite and a folder or
over PostgreSQL, S3 and queue workers.

Sync methods touch only stores and are called from a thread pool; async ones are the steps that wait
(uploads streaming in, inference).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.concurrency import run_in_threadpool

from contract import errors as codes
from contract.sessions import RESULT_STATUSES, SessionStatus, check_transition
from contract.tensor import TensorFormatError, from_bytes
from contract.vitals import DEFAULT_FALLBACK_CONFIG
from server.config import ServerConfig
from server.errors import ApiError, invalid_key
from server.jobs import InferenceRunner, MissingTensor
from server.processing import Outcome
from server.signing import upload_url, verify_upload
from server.stores.base import (
    AuthedKey,
    BlobStore,
    NewSession,
    RateState,
    SessionRow,
    SessionStore,
    StoreUnavailable,
    UsageState,
    is_session_id,
)

log = logging.getLogger("vitalcam.server")

S = SessionStatus
# Sent with every refusal that leaves a request body unread, so uvicorn closes the connection instead of
# reading (and discarding) the rest of a body nobody wants.
CLOSE = {"Connection": "close"}
# How often a claim the session store could not release is tried again (see `_release_soon`).
RELEASE_RETRY_S = 1.0
NOT_UPLOADED = "No tensor has been uploaded for this session; PUT it to upload_url first"


@dataclass(frozen=True, slots=True)
class _Kept:
    """An outcome computed here whose session could not be settled, until its developer comes back."""

    outcome: Outcome
    expires_at: float
    developer_id: int


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request: its key and the limits after counting it."""

    key: AuthedKey
    rate: RateState
    usage: UsageState


class SessionService:
    def __init__(
        self,
        config: ServerConfig,
        sessions: SessionStore,
        blobs: BlobStore,
        secret: bytes,
        runner: InferenceRunner,
        *,
        single_process: bool,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.blobs = blobs
        self.secret = secret
        self.runner = runner
        self.single_process = single_process
        self.inflight: dict[str, asyncio.Future[Outcome]] = {}
        # Claims of failed requests that could not be released because the session store was down; each
        # task retries until the store answers, so the client's repeat (409 meanwhile) gets through.
        self._releases: set[asyncio.Task[None]] = set()
        # Outcomes computed here whose session row could not be settled (the session store was down):
        # kept in memory, never on disk, until the client's repeated upload-complete settles and gets
        # them, or the session expires. A queue worker stores its outcome in the row instead.
        self._undelivered: dict[str, _Kept] = {}

    # ---- state machine ------------------------------------------------------------------------------

    def move(
        self,
        session_id: str,
        source: SessionStatus,
        target: SessionStatus,
        *,
        require_upload: bool | None = None,
        claim: str | None = None,
        holder: str | None = None,
    ) -> bool:
        """One step of the table, as a compare-and-set: False when another request got there first.
        `claim` is the token a claiming step writes, `holder` the one a releasing step requires."""
        check_transition(source, target)
        return self.sessions.transition(
            session_id, source, target, require_upload=require_upload, claim=claim, holder=holder
        )

    # ---- callers ------------------------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> AuthedKey | None:
        return self.sessions.authenticate(api_key)

    def admit(self, api_key: str | None, now_s: float) -> Caller:
        """Check the key, then count the request against the key's hourly limit.

        Every authenticated request counts toward the hourly rate limit, including ones that then fail;
        only session starts count toward the monthly quota. Raises 401, or 429 with `caller` attached so
        the limit headers still go out.
        """
        key = self.sessions.authenticate(api_key)
        if key is None:
            raise invalid_key()
        rate = self.sessions.count_request(key.key_id, now_s, self.config.rate_limit_per_hour)
        usage = self.sessions.usage(key.developer_id, now_s, self.config.monthly_quota)
        caller = Caller(key=key, rate=rate, usage=usage)
        if not rate.allowed:
            retry_after_s = max(1, rate.reset_at - int(now_s))
            error = ApiError.of(
                codes.RATE_LIMIT_EXCEEDED,
                f"Hourly rate limit of {rate.limit} requests exceeded; retry after {retry_after_s} s",
                headers={"Retry-After": str(retry_after_s)},
            )
            raise RateLimited(error, caller)
        return caller

    # ---- start --------------------------------------------------------------------------------------

    def start(
        self, caller: Caller, demographics: dict[str, Any] | None, base_url: str
    ) -> tuple[dict[str, Any], UsageState]:
        """Consume one scan of the developer's monthly quota and hand out an upload URL."""
        session_id = str(uuid.uuid4())
        usage, expires_at = self.sessions.start_session(
            NewSession(
                session_id=session_id,
                key=caller.key,
                now_s=time.time(),
                ttl_s=self.config.session_ttl_s,
                demographics=demographics or None,
                fallback_config=DEFAULT_FALLBACK_CONFIG,
            ),
            self.config.monthly_quota,
        )
        if expires_at is None:
            raise QuotaRefused(
                ApiError.of(codes.QUOTA_EXCEEDED, f"Monthly scan quota of {usage.limit} sessions exceeded"),
                usage,
            )
        url = self.blobs.presigned_put_url(session_id, expires_at, self.config.max_upload_bytes)
        if url is None:
            url = upload_url(base_url, self.secret, session_id, expires_at)
        body = {
            "session_id": session_id,
            "expires_at": expires_at,
            "upload_url": url,
            "fallback_config": DEFAULT_FALLBACK_CONFIG,
        }
        return body, usage

    # ---- uploads through the API ----------------------------------------------------------------------

    async def receive_upload(
        self, session_id: str, expires: str | None, signature: str | None, body: AsyncIterator[bytes]
    ) -> int:
        """Claim the session (created → uploading), store the body, validate it as a tensor, record it.

        Any failure puts the session back in `created` so the client can PUT again with the same URL.
        """
        signed_expiry = verify_upload(self.secret, session_id, expires, signature)
        if signed_expiry is None or not is_session_id(session_id):
            raise ApiError.of(codes.FORBIDDEN, "Upload URL signature is invalid", headers=CLOSE)
        if time.time() >= signed_expiry:
            raise ApiError.of(codes.FORBIDDEN, "Upload URL has expired", headers=CLOSE)
        session = await run_in_threadpool(self.sessions.get_session, session_id)
        if session is None:
            raise ApiError.of(codes.SESSION_NOT_FOUND, "Session not found", headers=CLOSE)
        claim = new_claim()
        release = functools.partial(self._abandon_upload, session_id, claim)
        try:
            claimed = await run_in_threadpool(
                self.move, session_id, S.CREATED, S.UPLOADING, require_upload=False, claim=claim
            )
        except StoreUnavailable:
            # The claim may have been written and only its acknowledgement lost: release it if it is there.
            await asyncio.shield(self._release_soon(release, session_id, signed_expiry))
            raise
        if not claimed:
            raise upload_refusal(await run_in_threadpool(self.sessions.get_session, session_id))
        try:
            n_bytes = 0
            with self.blobs.writer(session_id) as writer:
                async for chunk in body:
                    n_bytes += len(chunk)
                    writer.write(chunk)
                writer.commit()
            await run_in_threadpool(self._validate_stored, session_id)
            recorded = await run_in_threadpool(
                self.sessions.finish_upload, session_id, time.time(), n_bytes, claim=claim
            )
        except BaseException:
            await asyncio.shield(self._release_soon(release, session_id, signed_expiry))
            raise
        if not recorded:
            await run_in_threadpool(self.blobs.delete, session_id)
            raise ApiError.of(codes.FORBIDDEN, "Upload URL has expired")
        return n_bytes

    def _validate_stored(self, session_id: str) -> int:
        """Parse the stored tensor; a missing one is None, a bad one a 400 naming the field."""
        try:
            payload = self.blobs.read(session_id, self.config.max_upload_bytes)
        except ValueError:
            raise ApiError.of(
                codes.PAYLOAD_TOO_LARGE, f"Upload exceeds the {self.config.max_upload_bytes}-byte limit"
            ) from None
        if payload is None:
            raise ApiError.of(codes.INVALID_REQUEST, NOT_UPLOADED)
        try:
            from_bytes(payload)
        except TensorFormatError as exc:
            raise ApiError.of(codes.INVALID_REQUEST, str(exc)) from None
        return len(payload)

    def _abandon_upload(self, session_id: str, claim: str) -> None:
        """Undo a failed PUT if its claim stands: the blob first, while no other PUT can write one, then
        the claim and any recorded upload in one statement. A claim that was never written (its
        statement failed) or is gone (expired) leaves everything as it is."""
        session = self.sessions.get_session(session_id)
        if session is None or session.status != S.UPLOADING or session.claim_token != claim:
            return
        check_transition(S.UPLOADING, S.CREATED)
        self.blobs.delete(session_id)
        self.sessions.release_upload(session_id, claim=claim)

    def _release_processing(self, session_id: str, claim: str) -> None:
        """Put a session this request claimed for inference back to `uploading`, its tensor kept."""
        self.move(session_id, S.PROCESSING, S.UPLOADING, holder=claim)

    async def _release_soon(self, release: Callable[[], None], session_id: str, until_s: float) -> None:
        """Release a failed request's claim now or, if the session store is down, as soon as it is back.

        A claim left in place would answer every repeat with 409 until the session expired: the store
        going down (or losing one acknowledgement) must cost the client a retry, not the session.
        Releases require the request's own claim token, so one that comes late can never undo a claim
        another request has made since.
        """
        try:
            await run_in_threadpool(release)
        except StoreUnavailable:
            log.warning("session store unreachable; releasing the claim on %s later", session_id)
            task = asyncio.create_task(self._release_when_reachable(release, session_id, until_s))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release_when_reachable(
        self, release: Callable[[], None], session_id: str, until_s: float
    ) -> None:
        while time.time() < until_s:  # after that the sweeper expires the session anyway
            await asyncio.sleep(RELEASE_RETRY_S)
            try:
                await run_in_threadpool(release)
            except StoreUnavailable:
                continue
            except Exception:
                log.exception("releasing the claim on %s failed", session_id)
            return

    # ---- completion ---------------------------------------------------------------------------------

    def owned_session(self, caller: Caller, session_id: str) -> SessionRow:
        session = self.sessions.get_session(session_id)
        if session is None:
            raise ApiError.of(codes.SESSION_NOT_FOUND, "Session not found")
        if session.developer_id != caller.key.developer_id:
            raise ApiError.of(codes.FORBIDDEN, "Session does not belong to this developer")
        return session

    async def complete(self, caller: Caller, session_id: str) -> dict[str, Any]:
        """Run inference once per session; concurrent or repeated calls get that same answer."""
        kept = self._undelivered.get(session_id)
        if kept is not None and kept.developer_id == caller.key.developer_id:
            # Before the row is read: with PERSIST_VITALS=false it may be gone already (the delete
            # committed and only its acknowledgement was lost).
            await asyncio.shield(run_in_threadpool(self._finish, session_id, kept.outcome))
            self._undelivered.pop(session_id, None)
            return kept.outcome.body
        session = await run_in_threadpool(self.owned_session, caller, session_id)
        running = self.inflight.get(session.id)
        if running is not None:
            return (await asyncio.shield(running)).body
        if session.response is not None:
            if not self.config.persist_vitals:  # a worker stored it and the answer was never delivered
                await asyncio.shield(run_in_threadpool(self._forget, session.id))
            return session.response
        if session.status == S.EXPIRED or time.time() >= session.expires_at:
            raise ApiError.of(codes.SESSION_EXPIRED, "Session expired before completion")
        direct = session.status == S.CREATED and self._uploads_go_to_the_store()
        if session.status == S.PROCESSING:
            return (await self._wait_elsewhere(session.id)).body
        if not direct and (session.status != S.UPLOADING or session.uploaded_at is None):
            raise ApiError.of(codes.INVALID_REQUEST, NOT_UPLOADED)
        return (await self._process_once(session, direct)).body

    def _uploads_go_to_the_store(self) -> bool:
        return self.blobs.direct_uploads

    async def _process_once(self, session: SessionRow, direct: bool) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self.inflight[session.id] = future  # registered before any await: a concurrent call waits on it
        try:
            if direct:
                await run_in_threadpool(self._accept_direct_upload, session.id)
            claim = new_claim()
            release = functools.partial(self._release_processing, session.id, claim)
            try:
                claimed = await run_in_threadpool(
                    self.move, session.id, S.UPLOADING, S.PROCESSING, require_upload=True, claim=claim
                )
            except StoreUnavailable:  # the claim may stand with its acknowledgement lost
                await asyncio.shield(self._release_soon(release, session.id, session.expires_at))
                raise
            if not claimed:
                outcome = await self._settled_outcome(session.id)
            else:
                outcome = await self._infer(session, release)
                await asyncio.shield(self._finish_or_keep(session, outcome))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody may be waiting
            self.inflight.pop(session.id, None)
            raise
        future.set_result(outcome)
        self.inflight.pop(session.id, None)
        return outcome

    async def _finish_or_keep(self, session: SessionRow, outcome: Outcome) -> None:
        """Settle the session; if the store is down, keep the outcome for the client's retry (a 503 now).

        Without this an in-process outcome was lost with the outage: the row stayed `processing`, and
        every repeated upload-complete was a 409 until the sweeper expired the session.
        """
        try:
            await run_in_threadpool(self._finish, session.id, outcome)
        except StoreUnavailable:
            if not self.runner.stores_outcome:
                log.warning("session store unreachable; keeping the outcome of %s for a retry", session.id)
                self._undelivered[session.id] = _Kept(
                    outcome, float(session.expires_at), session.developer_id
                )
            raise

    def _accept_direct_upload(self, session_id: str) -> None:
        """The client PUT straight to the object store: validate the tensor now, as a PUT here would.

        The session goes created → uploading with the upload recorded in one statement, after validation:
        a claim and a record made separately left the session half-claimed (uploading, nothing recorded,
        refused for good) when the session store dropped between them. Concurrent calls may both
        validate; one records, and the uploading → processing claim decides who runs it. A missing or bad
        tensor is deleted, so the same URL can be used again.
        """
        try:
            n_bytes = self._validate_stored(session_id)
        except ApiError:
            self.blobs.delete(session_id)
            raise
        except Exception as exc:  # the object store is unreachable: nothing changed, the client may repeat
            raise StoreUnavailable(str(exc)) from exc
        check_transition(S.CREATED, S.UPLOADING)
        self.sessions.record_direct_upload(session_id, time.time(), n_bytes)

    async def _infer(self, session: SessionRow, release: Callable[[], None]) -> Outcome:
        """The runner's outcome; on failure `release` puts the claimed session back to `uploading`."""
        try:
            return await self.runner.run(session, self.config.max_upload_bytes)
        except MissingTensor:
            await asyncio.shield(self._release_soon(release, session.id, session.expires_at))
            raise ApiError.of(
                codes.INVALID_REQUEST, "The uploaded tensor is gone; start a new session"
            ) from None
        except BaseException:
            # A queued job keeps running whatever happens to this request (a retry waits for it); an
            # in-process one is gone, so the session goes back to `uploading` and a retry of
            # upload-complete runs it again (its tensor is still stored).
            if not self.runner.stores_outcome:
                await asyncio.shield(self._release_soon(release, session.id, session.expires_at))
            raise

    async def _wait_elsewhere(self, session_id: str) -> Outcome:
        outcome = await self.runner.wait_elsewhere(session_id)
        if outcome is None:
            return await self._settled_outcome(session_id)
        if not self.config.persist_vitals:
            await asyncio.shield(run_in_threadpool(self._forget, session_id))
        return outcome

    async def _settled_outcome(self, session_id: str) -> Outcome:
        """Another request has this session: its stored result, or a retryable 409 while it runs."""
        session = await run_in_threadpool(self.sessions.get_session, session_id)
        if session is None:
            raise ApiError.of(codes.SESSION_NOT_FOUND, "Session not found")
        if session.response is not None:
            return Outcome(body=session.response, measured=session.status == S.COMPLETED)
        raise ApiError.of(codes.UPLOAD_IN_PROGRESS, "Session is changing state; retry")

    def _finish(self, session_id: str, outcome: Outcome) -> None:
        """Keep the result only with PERSIST_VITALS; otherwise remove every trace of the session now."""
        if self.config.persist_vitals:
            status = S.COMPLETED if outcome.measured else S.FAILED
            check_transition(S.PROCESSING, status)
            self.sessions.store_response(session_id, status, outcome.body, time.time())
            self.blobs.delete(session_id)
        else:
            self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        self.blobs.delete(session_id)
        self.sessions.delete_session(session_id)

    # ---- result -------------------------------------------------------------------------------------

    def result(self, caller: Caller, session_id: str) -> dict[str, Any]:
        session = self.owned_session(caller, session_id)
        body: dict[str, Any] = {"session_id": session.id}
        if session.response is not None and session.status in RESULT_STATUSES:
            body["status"] = session.status.value
            body["vitals"] = session.response["vitals"]
            body["completed_at"] = int(session.completed_at or time.time())
            body["quality"] = session.response.get("quality", {})
        elif session.status == S.PROCESSING or session.id in self.inflight:
            body["status"] = S.PROCESSING.value
        elif session.status == S.EXPIRED or time.time() >= session.expires_at:
            body["status"] = S.EXPIRED.value
        else:
            body["status"] = session.status.value
        return body

    # ---- lifecycle ----------------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart of the only process: mid-flight sessions go back to where a client can retry."""
        if self.single_process:
            self.sessions.recover_after_restart()
            self.blobs.discard_partials()

    def sweep(self) -> int:
        now_s = time.time()
        for session_id, kept in list(self._undelivered.items()):
            if now_s >= kept.expires_at:  # nobody came back for it: it goes with the session
                self._undelivered.pop(session_id, None)
        expired = self.sessions.sweep(now_s, self.config.expired_retention_s)
        for session_id in expired:
            self.blobs.delete(session_id)
        return len(expired)

    async def sweep_forever(self) -> None:
        while True:
            try:
                expired = await run_in_threadpool(self.sweep)
                if expired:
                    log.info("expired %d sessions", expired)
            except Exception:
                log.exception("session sweep failed")
            await asyncio.sleep(self.config.sweep_interval_s)

    async def close(self) -> None:
        for task in list(self._releases):
            task.cancel()
        await asyncio.gather(*self._releases, return_exceptions=True)
        await self.runner.close()
        self.blobs.close()
        self.sessions.close()


class RateLimited(Exception):
    """429 RATE_LIMIT_EXCEEDED, with the caller whose limits the response headers report."""

    def __init__(self, error: ApiError, caller: Caller) -> None:
        super().__init__(error.message)
        self.error = error
        self.caller = caller


class QuotaRefused(Exception):
    """429 QUOTA_EXCEEDED, with the usage the response headers report."""

    def __init__(self, error: ApiError, usage: UsageState) -> None:
        super().__init__(error.message)
        self.error = error
        self.usage = usage


def upload_refusal(session: SessionRow | None) -> ApiError:
    """Why a PUT cannot claim the session; the body is left unread, so the connection is closed."""
    if session is None:
        return ApiError.of(codes.SESSION_NOT_FOUND, "Session not found", headers=CLOSE)
    if session.status == S.UPLOADING and session.uploaded_at is None:
        return ApiError.of(
            codes.UPLOAD_IN_PROGRESS, "Another upload to this session is in progress", headers=CLOSE
        )
    if session.status == S.CREATED:  # another PUT's claim was released between our claim and this read
        return ApiError.of(codes.UPLOAD_IN_PROGRESS, "Session is changing state; retry", headers=CLOSE)
    if session.status == S.EXPIRED:
        return ApiError.of(codes.FORBIDDEN, "Upload URL has expired", headers=CLOSE)
    return ApiError.of(codes.FORBIDDEN, "Upload URL has already been used", headers=CLOSE)


def new_claim() -> str:
    """A claim token: unguessable and unique per request, so a release can only ever be its own."""
    return secrets.token_hex(8)
