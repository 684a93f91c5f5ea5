"""The sessions API as a FastAPI app: routes, auth, rate limit and quota headers, upload handling.

Everything that blocks (SQLite, parsing, inference) runs off the event loop: sync dependencies and
`run_in_threadpool` for storage, a dedicated thread pool for inference so a slow engine cannot starve
request handling of threads.

Memory and time are bounded before anything is trusted: `RequestGuardMiddleware` checks the API key before
reading a JSON body, never reads more than `max_json_body_bytes` of one, and gives up on a body that stalls;
uploads stream to disk under the same per-chunk timeout. Connections that never finish their headers are
closed by the protocol class in server/runner.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.tensor import TensorFormatError, from_bytes
from contract.vitals import DEFAULT_FALLBACK_CONFIG
from server.config import ServerConfig
from server.errors import ApiError, error_response, install_error_handlers, invalid_key
from server.models import (
    ErrorBody,
    HealthResponse,
    SessionResultResponse,
    SessionStartRequest,
    SessionStartResponse,
    UploadCompleteRequest,
    UploadCompleteResponse,
    UploadReceipt,
)
from server.processing import InferFn, Outcome, default_infer, process_upload
from server.signing import upload_url, verify_upload
from server.storage import AuthedKey, RateState, SessionRow, Store, UsageState, is_session_id

log = logging.getLogger("vitalcam.server")

UPLOAD_CHUNK_BYTES = 1024 * 1024
# After a 413 we read and discard up to this much more of the body so the client sees the 413 instead of
# a reset connection; beyond it we stop reading and let the connection close.
DRAIN_LIMIT_BYTES = 8 * 1024 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UPLOAD_PATH_PREFIX = "/sdk/upload/"
KEYED_PATH_PREFIX = "/sdk/session/"
# Sent with every refusal that leaves a request body unread, so uvicorn closes the connection instead of
# reading (and discarding) the rest of a body nobody wants.
_CLOSE = {"Connection": "close"}

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="ck_test_… or ck_live_… key")


@dataclass(slots=True)
class ServerState:
    """What the routes share; one per app (so several servers can run in one process)."""

    config: ServerConfig
    store: Store
    secret: bytes
    executor: ThreadPoolExecutor
    infer: InferFn
    inflight: dict[str, asyncio.Future[Outcome]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Caller:
    key: AuthedKey
    rate: RateState
    usage: UsageState


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "INVALID_REQUEST: invalid body or parameters (the message names the field)",
        401: "API_KEY_INVALID: invalid, revoked, or missing API key",
        403: "FORBIDDEN: session belongs to another developer, or bad/expired/used upload signature",
        404: "SESSION_NOT_FOUND: no such session",
        409: "UPLOAD_IN_PROGRESS: another upload to this URL is running",
        410: "SESSION_EXPIRED: the session expired before completion",
        413: "PAYLOAD_TOO_LARGE: upload exceeds the size limit",
        429: "RATE_LIMIT_EXCEEDED (retryable, Retry-After) or QUOTA_EXCEEDED (not retryable)",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


_LIMIT_HEADERS = {
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


def create_app(config: ServerConfig, *, infer: InferFn | None = None) -> FastAPI:
    """The app for one data directory; `infer` replaces the inference engine (benchmarks, tests)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.data_dir)
    state = ServerState(
        config=config,
        store=store,
        secret=store.server_secret(),
        executor=ThreadPoolExecutor(config.inference_workers, thread_name_prefix="vitalcam-infer"),
        infer=infer or default_infer,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(store.recover_after_restart)
        sweeper = asyncio.create_task(_sweep_forever(state))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            state.executor.shutdown(wait=True)
            store.close()

    from contract import __version__

    app = FastAPI(
        title="vitalcam reference backend",
        version=__version__,
        description="The vitalcam sessions API: start a session, PUT the tensor, upload-complete, result.",
        lifespan=lifespan,
    )
    app.state.vitalcam = state
    install_error_handlers(app)
    _add_routes(app)
    app.add_middleware(RequestGuardMiddleware, state=state)  # inner: runs after the request id is known
    app.add_middleware(ResponseHeadersMiddleware)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class ResponseHeadersMiddleware:
    """Adds X-Request-Id to every response and the rate/usage headers to every authenticated one.

    A pure ASGI middleware rather than BaseHTTPMiddleware so error responses from exception handlers get
    the headers too and upload bodies are streamed through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        request_state: MutableMapping[str, Any] = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                limits = request_state.get("limits")
                if limits is not None:
                    headers.extend(
                        (k.lower().encode(), v.encode()) for k, v in limit_headers(*limits).items()
                    )
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RequestGuardMiddleware:
    """Bounded memory and time for every request body except uploads (which stream to disk themselves).

    FastAPI reads a JSON body before any dependency runs, so without this a request with no key could make
    the server buffer a body of any size. Here, before a single body byte is read: a request to
    /sdk/session/* must carry a valid API key (else the standard 401), and a declared Content-Length above
    `max_json_body_bytes` is a 413. Then at most that many bytes are read (a chunked body is refused as soon
    as it passes the limit), the whole body within `body_timeout_s` (else 408), and the buffered body is
    handed to the app. Refusals carry `Connection: close`, so the unread rest of the body is never read.
    The hourly rate limit is still counted by `authenticate`, once, for requests that reach a route.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UPLOAD_PATH_PREFIX):
            await self.app(scope, receive, send)
            return
        declared_bytes, chunked = _declared_body(scope)
        if not chunked and not declared_bytes:
            await self.app(scope, receive, send)  # no body to guard (GET, or a start without a body)
            return
        config = self.state.config
        if scope["path"].startswith(KEYED_PATH_PREFIX):
            key = _header(scope, b"x-api-key")
            if await run_in_threadpool(self.state.store.authenticate, key) is None:
                error = invalid_key()
                await _refuse(scope, receive, send, error.status_code, error.code, error.message)
                return
        limit = config.max_json_body_bytes
        if declared_bytes is not None and declared_bytes > limit:
            await _refuse(scope, receive, send, 413, "PAYLOAD_TOO_LARGE", _json_too_large(limit))
            return
        body = bytearray()
        more_body = True
        deadline_s = asyncio.get_running_loop().time() + config.body_timeout_s  # 8 KiB: no excuse to trickle
        while more_body:
            try:
                remaining_s = deadline_s - asyncio.get_running_loop().time()
                if remaining_s <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining_s)
            except TimeoutError:
                await _refuse(scope, receive, send, 408, "REQUEST_TIMEOUT", _body_stalled(config), True)
                return
            if message["type"] == "http.disconnect":
                return  # the client left; there is nobody to answer
            body += message.get("body", b"")
            if len(body) > limit:
                await _refuse(scope, receive, send, 413, "PAYLOAD_TOO_LARGE", _json_too_large(limit))
                return
            more_body = message.get("more_body", False)
        await self.app(scope, _replay(bytes(body), receive), send)


def _declared_body(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length or None, whether the body is chunked); h11 has already rejected malformed ones."""
    length = _header(scope, b"content-length")
    chunked = _header(scope, b"transfer-encoding") is not None
    return (int(length) if length is not None and length.isdigit() else None), chunked


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the already-read body once, then defers to the real one (disconnects)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str, retryable: bool = False
) -> None:
    response = error_response(status, code, message, retryable, headers=_CLOSE)
    await response(scope, receive, send)


def _json_too_large(limit_bytes: int) -> str:
    return f"Request body exceeds the {limit_bytes}-byte limit for JSON bodies"


def _body_stalled(config: ServerConfig) -> str:
    return f"Request body not received within {config.body_timeout_s:g} s"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


def limit_headers(rate: RateState, usage: UsageState) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(rate.limit),
        "X-RateLimit-Remaining": str(rate.remaining),
        "X-RateLimit-Reset": str(rate.reset_at),
        "X-Usage-Current": str(usage.current),
        "X-Usage-Limit": str(usage.limit),
        "X-Usage-Remaining": str(usage.remaining),
    }


def _state(request: Request) -> ServerState:
    return request.app.state.vitalcam


def authenticate(request: Request, api_key: Annotated[str | None, Security(api_key_header)] = None) -> Caller:
    """Check the key, then count the request against the key's hourly limit.

    A sync dependency, so FastAPI runs it (and its SQLite work) in the thread pool. Every authenticated
    request counts toward the hourly rate limit, including ones that then fail; only session starts
    count toward the monthly quota.
    """
    state = _state(request)
    key = state.store.authenticate(api_key)
    if key is None:
        raise invalid_key()
    now_s = time.time()
    rate = state.store.count_request(key.key_id, now_s, state.config.rate_limit_per_hour)
    usage = state.store.usage(key.developer_id, now_s, state.config.monthly_quota)
    request.state.limits = (rate, usage)
    if not rate.allowed:
        retry_after_s = max(1, rate.reset_at - int(now_s))
        raise ApiError(
            429,
            "RATE_LIMIT_EXCEEDED",
            f"Hourly rate limit of {rate.limit} requests exceeded; retry after {retry_after_s} s",
            retryable=True,
            headers={"Retry-After": str(retry_after_s)},
        )
    return Caller(key=key, rate=rate, usage=usage)


AuthedCaller = Annotated[Caller, Depends(authenticate)]


def _add_routes(app: FastAPI) -> None:
    app.get("/health", response_model=HealthResponse, tags=["service"], summary="Liveness check")(health)
    app.post(
        "/sdk/session/start",
        response_model=SessionStartResponse,
        tags=["sessions"],
        summary="Create a session",
        responses={
            200: {"headers": _LIMIT_HEADERS},
            **_error_responses(400, 401, 429),
        },
    )(start_session)
    app.put(
        "/sdk/upload/{session_id}",
        response_model=UploadReceipt,
        tags=["sessions"],
        summary="Upload the tensor to the presigned URL (one successful PUT)",
        responses=_error_responses(400, 403, 404, 409, 413),
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The vitalcam tensor (format v1, safetensors); the Content-Type is not checked",
                "content": {
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in ("video/webm", "application/octet-stream")
                },
            }
        },
    )(upload_tensor)
    app.post(
        "/sdk/session/upload-complete",
        response_model=UploadCompleteResponse,
        tags=["sessions"],
        summary="Run inference on the uploaded tensor and return vitals",
        responses={200: {"headers": _LIMIT_HEADERS}, **_error_responses(400, 401, 403, 404, 410, 429)},
    )(upload_complete)
    app.get(
        "/sdk/session/result/{sessionId}",
        response_model=SessionResultResponse,
        tags=["sessions"],
        summary="Poll a session's status and (with PERSIST_VITALS=true) its result",
        responses={200: {"headers": _LIMIT_HEADERS}, **_error_responses(400, 401, 403, 404, 429)},
    )(session_result)


async def health() -> JSONResponse:
    from contract import __version__

    return JSONResponse({"status": "ok", "version": __version__})


def start_session(
    request: Request,
    caller: AuthedCaller,
    body: Annotated[SessionStartRequest | None, Body()] = None,
) -> JSONResponse:
    """Consume one scan of the developer's monthly quota and hand out a signed upload URL."""
    state = _state(request)
    base_url = _upload_base_url(state.config, request.scope)  # before the quota is touched
    session_id = str(uuid.uuid4())
    demographics = body.demographics.model_dump(exclude_none=True) if body and body.demographics else None
    fallback_config = DEFAULT_FALLBACK_CONFIG
    usage, expires_at = state.store.start_session(
        session_id=session_id,
        key=caller.key,
        now_s=time.time(),
        ttl_s=state.config.session_ttl_s,
        quota=state.config.monthly_quota,
        demographics=demographics or None,
        fallback_config=fallback_config,
    )
    request.state.limits = (caller.rate, usage)
    if expires_at is None:
        raise ApiError(
            429, "QUOTA_EXCEEDED", f"Monthly scan quota of {usage.limit} sessions exceeded", retryable=False
        )
    return JSONResponse(
        {
            "session_id": session_id,
            "expires_at": expires_at,
            "upload_url": upload_url(base_url, state.secret, session_id, expires_at),
            "fallback_config": fallback_config,
        }
    )


def _upload_base_url(config: ServerConfig, scope: Scope) -> str:
    """Where upload URLs point: the configured public URL, else the loopback address we listen on.

    Never the request's Host or X-Forwarded-* headers: anyone can send those, and an upload URL pointing
    at their host would hand them the person's tensor.
    """
    if config.public_base_url:
        return config.public_base_url
    host, port = (scope.get("server") or (None, None))[:2]
    if host and _is_loopback(host) and port:
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{scope.get('scheme', 'http')}://{netloc}"
    raise ApiError(
        500,
        "SERVER_MISCONFIGURED",
        "This server listens on a non-loopback address without VITALCAM_PUBLIC_BASE_URL, so it cannot "
        "build upload URLs (it never takes them from request headers)",
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def upload_tensor(
    request: Request,
    session_id: str,
    expires: Annotated[str | None, Query(description="Unix expiry signed into the URL")] = None,
    signature: Annotated[str | None, Query(description="HMAC-SHA256 signature")] = None,
) -> JSONResponse:
    """Stream the body to disk (never all in memory), validate it as a tensor, and keep it for inference.

    Any failure puts the session back in `created` so the client can PUT again with the same URL.
    """
    state = _state(request)
    signed_expiry = verify_upload(state.secret, session_id, expires, signature)
    if signed_expiry is None or not is_session_id(session_id):
        raise ApiError(403, "FORBIDDEN", "Upload URL signature is invalid", headers=_CLOSE)
    if time.time() >= signed_expiry:
        raise ApiError(403, "FORBIDDEN", "Upload URL has expired", headers=_CLOSE)
    session = await run_in_threadpool(state.store.get_session, session_id)
    if session is None:
        raise ApiError(404, "SESSION_NOT_FOUND", "Session not found", headers=_CLOSE)
    claimed = await run_in_threadpool(
        state.store.transition, session_id, "created", "uploading", require_upload=False
    )
    if not claimed:
        raise _upload_refusal(await run_in_threadpool(state.store.get_session, session_id))
    part = state.store.blob_path(session_id, ".part")
    try:
        n_bytes = await _receive_body(request, part, state.config)
        await run_in_threadpool(_validate_tensor_file, part)
        part.replace(state.store.blob_path(session_id))
    except BaseException:
        part.unlink(missing_ok=True)
        await asyncio.shield(
            run_in_threadpool(
                state.store.transition, session_id, "uploading", "created", require_upload=False
            )
        )
        raise
    if not await run_in_threadpool(state.store.finish_upload, session_id, time.time(), n_bytes):
        state.store.blob_path(session_id).unlink(missing_ok=True)
        raise ApiError(403, "FORBIDDEN", "Upload URL has expired")
    return JSONResponse({"session_id": session_id, "status": "uploading", "received_bytes": n_bytes})


def _upload_refusal(session: SessionRow | None) -> ApiError:
    """Why a PUT cannot claim the session; the body is left unread, so the connection is closed."""
    if session is None:
        return ApiError(404, "SESSION_NOT_FOUND", "Session not found", headers=_CLOSE)
    if session.status == "uploading" and session.uploaded_at is None:
        return ApiError(
            409,
            "UPLOAD_IN_PROGRESS",
            "Another upload to this session is in progress",
            retryable=True,
            headers=_CLOSE,
        )
    if session.status == "expired":
        return ApiError(403, "FORBIDDEN", "Upload URL has expired", headers=_CLOSE)
    return ApiError(403, "FORBIDDEN", "Upload URL has already been used", headers=_CLOSE)


async def _receive_body(request: Request, part: Path, config: ServerConfig) -> int:
    """Stream the upload to `part`; 413 past the size limit, 408 when it stalls or outlasts its deadline."""
    max_bytes = config.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        await _drain(request, int(declared), config)
        raise _too_large(max_bytes)
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + config.upload_timeout_s
    n_bytes = 0
    with part.open("wb") as f:
        more_body = True
        while more_body:
            message = await _next_message(request, config, deadline_s)
            if message["type"] == "http.disconnect":
                raise ApiError(400, "INVALID_REQUEST", "Upload interrupted before the body was complete")
            chunk = message.get("body", b"")
            n_bytes += len(chunk)
            if n_bytes > max_bytes:
                await _drain(request, None, config)
                raise _too_large(max_bytes)
            if chunk:
                f.write(chunk)
            more_body = message.get("more_body", False)
    return n_bytes


async def _next_message(request: Request, config: ServerConfig, deadline_s: float) -> Message:
    """The next body message, waiting at most `body_timeout_s` and never past the whole-body deadline."""
    remaining_s = deadline_s - asyncio.get_running_loop().time()
    if remaining_s <= 0:
        raise ApiError(
            408,
            "REQUEST_TIMEOUT",
            f"Upload took longer than {config.upload_timeout_s:g} s",
            retryable=True,
            headers=_CLOSE,
        )
    try:
        return await asyncio.wait_for(request.receive(), min(config.body_timeout_s, remaining_s))
    except TimeoutError:
        if remaining_s <= config.body_timeout_s:
            message = f"Upload took longer than {config.upload_timeout_s:g} s"
        else:
            message = f"Upload stalled: nothing arrived for {config.body_timeout_s:g} s"
        raise ApiError(408, "REQUEST_TIMEOUT", message, retryable=True, headers=_CLOSE) from None


async def _drain(request: Request, declared_bytes: int | None, config: ServerConfig) -> None:
    """Read and drop the rest of an oversized body (bounded in bytes and time) so the client reads our 413."""
    if declared_bytes is not None and declared_bytes > DRAIN_LIMIT_BYTES:
        return
    drained = 0
    deadline_s = asyncio.get_running_loop().time() + config.body_timeout_s
    with contextlib.suppress(ApiError):
        while drained <= DRAIN_LIMIT_BYTES:
            message = await _next_message(request, config, deadline_s)
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return
            drained += len(message.get("body", b""))


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"Upload exceeds the {max_bytes}-byte limit", headers=_CLOSE)


def _validate_tensor_file(path: Path) -> None:
    try:
        from_bytes(path.read_bytes())
    except TensorFormatError as exc:
        raise ApiError(400, "INVALID_REQUEST", str(exc)) from None


def _owned_session(state: ServerState, caller: Caller, session_id: str) -> SessionRow:
    session = state.store.get_session(session_id)
    if session is None:
        raise ApiError(404, "SESSION_NOT_FOUND", "Session not found")
    if session.developer_id != caller.key.developer_id:
        raise ApiError(403, "FORBIDDEN", "Session does not belong to this developer")
    return session


async def upload_complete(
    request: Request, caller: AuthedCaller, body: UploadCompleteRequest
) -> JSONResponse:
    """Run inference once per session; concurrent or repeated calls get that same answer."""
    state = _state(request)
    session = await run_in_threadpool(_owned_session, state, caller, body.session_id)
    running = state.inflight.get(session.id)
    if running is not None:
        return JSONResponse((await asyncio.shield(running)).body)
    if session.response is not None:
        return JSONResponse(session.response)
    if session.status == "expired" or time.time() >= session.expires_at:
        raise ApiError(410, "SESSION_EXPIRED", "Session expired before completion")
    if session.status != "uploading" or session.uploaded_at is None:
        raise ApiError(
            400, "INVALID_REQUEST", "No tensor has been uploaded for this session; PUT it to upload_url first"
        )
    return JSONResponse((await _process_once(state, session)).body)


async def _process_once(state: ServerState, session: SessionRow) -> Outcome:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Outcome] = loop.create_future()
    state.inflight[session.id] = future  # registered before any await: a concurrent call waits on it
    try:
        claimed = await run_in_threadpool(
            state.store.transition, session.id, "uploading", "processing", require_upload=True
        )
        if not claimed:
            outcome = await run_in_threadpool(_settled_outcome, state, session.id)
            future.set_result(outcome)
            state.inflight.pop(session.id, None)
            return outcome
        outcome = await loop.run_in_executor(state.executor, _run_inference, state, session)
        await asyncio.shield(run_in_threadpool(_finish, state, session.id, outcome))
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # mark retrieved: nobody may be waiting
        state.inflight.pop(session.id, None)
        raise
    future.set_result(outcome)
    state.inflight.pop(session.id, None)
    return outcome


def _settled_outcome(state: ServerState, session_id: str) -> Outcome:
    """Another request finished this session between our read and our claim: answer with its result."""
    session = state.store.get_session(session_id)
    if session is None:
        raise ApiError(404, "SESSION_NOT_FOUND", "Session not found")
    if session.response is not None:
        return Outcome(body=session.response, measured=session.status == "completed")
    raise ApiError(409, "UPLOAD_IN_PROGRESS", "Session is changing state; retry", retryable=True)


def _run_inference(state: ServerState, session: SessionRow) -> Outcome:
    return process_upload(
        session.id,
        state.store.blob_path(session.id),
        session.demographics,
        session.fallback_config,
        state.infer,
    )


def _finish(state: ServerState, session_id: str, outcome: Outcome) -> None:
    """Keep the result only with PERSIST_VITALS; otherwise remove every trace of the session now."""
    if state.config.persist_vitals:
        status = "completed" if outcome.measured else "failed"
        state.store.store_response(session_id, status, outcome.body, time.time())
        state.store.blob_path(session_id).unlink(missing_ok=True)
    else:
        state.store.delete_session(session_id)


def session_result(
    request: Request,
    caller: AuthedCaller,
    session_id: Annotated[str, PathParam(alias="sessionId", max_length=128)],
) -> JSONResponse:
    state = _state(request)
    session = _owned_session(state, caller, session_id)
    body: dict[str, Any] = {"session_id": session.id}
    if session.response is not None:
        body["status"] = session.status
        body["vitals"] = session.response["vitals"]
        body["completed_at"] = int(session.completed_at or time.time())
        body["quality"] = session.response.get("quality", {})
    elif session.status == "processing" or session.id in state.inflight:
        body["status"] = "processing"
    elif session.status == "expired" or time.time() >= session.expires_at:
        body["status"] = "expired"
    else:
        body["status"] = session.status
    return JSONResponse(body)


async def _sweep_forever(state: ServerState) -> None:
    while True:
        try:
            expired = await run_in_threadpool(
                state.store.sweep, time.time(), state.config.expired_retention_s
            )
            if expired:
                log.info("expired %d sessions", expired)
        except Exception:
            log.exception("session sweep failed")
        await asyncio.sleep(state.config.sweep_interval_s)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, minus the 422 it adds by default: validation errors here are 400s."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema


__all__ = ["create_app", "limit_headers"]
