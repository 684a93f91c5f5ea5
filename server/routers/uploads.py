"""PUT /sdk/upload/{session_id}: the API's own presigned upload URL, for blob stores that have none.

The body streams into the blob store chunk by chunk (never all in memory) under the upload limits: 413
past `max_upload_bytes` (read on, bounded, so the client sees the 413 rather than a reset), 408 when it
stalls for `body_timeout_s` or outlasts `upload_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.types import Message

from contract import errors as codes
from server.config import ServerConfig
from server.dependencies import Service
from server.errors import ApiError
from server.models import UploadReceipt
from server.routers._openapi import error_responses
from server.service import CLOSE

# After a 413 we read and discard up to this much more of the body so the client sees the 413 instead of
# a reset connection; beyond it we stop reading and let the connection close.
DRAIN_LIMIT_BYTES = 8 * 1024 * 1024

router = APIRouter(tags=["sessions"])


@router.put(
    "/sdk/upload/{session_id}",
    response_model=UploadReceipt,
    summary="Upload the tensor to the presigned URL (one successful PUT)",
    responses=error_responses(400, 403, 404, 409, 413),
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
)
async def upload_tensor(
    request: Request,
    service: Service,
    session_id: str,
    expires: Annotated[str | None, Query(description="Unix expiry signed into the URL")] = None,
    signature: Annotated[str | None, Query(description="HMAC-SHA256 signature")] = None,
) -> JSONResponse:
    """Store and validate the tensor; any failure leaves the session ready for another PUT."""
    n_bytes = await service.receive_upload(
        session_id, expires, signature, body_chunks(request, service.config)
    )
    return JSONResponse({"session_id": session_id, "status": "uploading", "received_bytes": n_bytes})


async def body_chunks(request: Request, config: ServerConfig) -> AsyncIterator[bytes]:
    """The upload's body, chunk by chunk, raising 413 past the size limit and 408 when it stalls."""
    max_bytes = config.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        await _drain(request, int(declared), config)
        raise _too_large(max_bytes)
    deadline_s = asyncio.get_running_loop().time() + config.upload_timeout_s
    n_bytes = 0
    more_body = True
    while more_body:
        message = await _next_message(request, config, deadline_s)
        if message["type"] == "http.disconnect":
            raise ApiError.of(codes.INVALID_REQUEST, "Upload interrupted before the body was complete")
        chunk = message.get("body", b"")
        n_bytes += len(chunk)
        if n_bytes > max_bytes:
            await _drain(request, None, config)
            raise _too_large(max_bytes)
        if chunk:
            yield chunk
        more_body = message.get("more_body", False)


async def _next_message(request: Request, config: ServerConfig, deadline_s: float) -> Message:
    """The next body message, waiting at most `body_timeout_s` and never past the whole-body deadline."""
    remaining_s = deadline_s - asyncio.get_running_loop().time()
    if remaining_s <= 0:
        raise ApiError.of(
            codes.REQUEST_TIMEOUT, f"Upload took longer than {config.upload_timeout_s:g} s", headers=CLOSE
        )
    try:
        return await asyncio.wait_for(request.receive(), min(config.body_timeout_s, remaining_s))
    except TimeoutError:
        if remaining_s <= config.body_timeout_s:
            message = f"Upload took longer than {config.upload_timeout_s:g} s"
        else:
            message = f"Upload stalled: nothing arrived for {config.body_timeout_s:g} s"
        raise ApiError.of(codes.REQUEST_TIMEOUT, message, headers=CLOSE) from None


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
    return ApiError.of(codes.PAYLOAD_TOO_LARGE, f"Upload exceeds the {max_bytes}-byte limit", headers=CLOSE)
