"""Pure ASGI middleware: request ids and limit headers on every response, and bounded request bodies.

Pure ASGI rather than BaseHTTPMiddleware, so error responses from exception handlers get the headers too
and upload bodies are streamed through untouched.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract import errors as codes
from server.config import ServerConfig
from server.errors import error_response, invalid_key, unavailable_message
from server.stores.base import AuthedKey, RateState, StoreUnavailable, UsageState

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UPLOAD_PATH_PREFIX = "/sdk/upload/"
KEYED_PATH_PREFIX = "/sdk/session/"
# Sent with every refusal that leaves a request body unread, so uvicorn closes the connection instead of
# reading (and discarding) the rest of a body nobody wants.
_CLOSE = {"Connection": "close"}


class ResponseHeadersMiddleware:
    """Adds X-Request-Id to every response and the rate/usage headers to every authenticated one.

    The limits come from `scope["state"]["limits"]`, which the auth dependency sets.
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

    def __init__(
        self, app: ASGIApp, config: ServerConfig, authenticate: Callable[[str | None], AuthedKey | None]
    ) -> None:
        self.app = app
        self.config = config
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UPLOAD_PATH_PREFIX):
            await self.app(scope, receive, send)
            return
        declared_bytes, chunked = _declared_body(scope)
        if not chunked and not declared_bytes:
            await self.app(scope, receive, send)  # no body to guard (GET, or a start without a body)
            return
        config = self.config
        if scope["path"].startswith(KEYED_PATH_PREFIX):
            key = _header(scope, b"x-api-key")
            try:
                authed = await run_in_threadpool(self.authenticate, key)
            except StoreUnavailable as exc:  # raised out here, FastAPI's handlers would never see it
                code = codes.SERVICE_UNAVAILABLE
                await _refuse(
                    scope, receive, send, code.http_status, code.code, unavailable_message(exc), True
                )
                return
            if authed is None:
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
            return bytes(value).decode("latin-1")
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
            text = bytes(value).decode("latin-1")
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
