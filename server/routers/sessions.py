"""POST /sdk/session/start, POST /sdk/session/upload-complete, GET /sdk/session/result/{sessionId}."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Body, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.types import Scope

from contract import errors as codes
from server.config import ServerConfig
from server.dependencies import AuthedCaller, Service
from server.errors import ApiError
from server.models import (
    SessionResultResponse,
    SessionStartRequest,
    SessionStartResponse,
    UploadCompleteRequest,
    UploadCompleteResponse,
)
from server.routers._openapi import LIMIT_HEADERS, error_responses
from server.service import QuotaRefused

router = APIRouter(prefix="/sdk/session", tags=["sessions"])


@router.post(
    "/start",
    response_model=SessionStartResponse,
    summary="Create a session",
    responses={200: {"headers": LIMIT_HEADERS}, **error_responses(400, 401, 429)},
)
def start_session(
    request: Request,
    caller: AuthedCaller,
    service: Service,
    body: Annotated[SessionStartRequest | None, Body()] = None,
) -> JSONResponse:
    """Consume one scan of the developer's monthly quota and hand out an upload URL."""
    base_url = upload_base_url(service.config, request.scope)  # before the quota is touched
    demographics = body.demographics.model_dump(exclude_none=True) if body and body.demographics else None
    try:
        started, usage = service.start(caller, demographics, base_url)
    except QuotaRefused as refused:
        request.state.limits = (caller.rate, refused.usage)
        raise refused.error from None
    request.state.limits = (caller.rate, usage)
    return JSONResponse(started)


@router.post(
    "/upload-complete",
    response_model=UploadCompleteResponse,
    summary="Run inference on the uploaded tensor and return vitals",
    responses={200: {"headers": LIMIT_HEADERS}, **error_responses(400, 401, 403, 404, 410, 429, 503)},
)
async def upload_complete(
    caller: AuthedCaller, service: Service, body: UploadCompleteRequest
) -> JSONResponse:
    return JSONResponse(await service.complete(caller, body.session_id))


@router.get(
    "/result/{sessionId}",
    response_model=SessionResultResponse,
    summary="Poll a session's status and (with PERSIST_VITALS=true) its result",
    responses={200: {"headers": LIMIT_HEADERS}, **error_responses(400, 401, 403, 404, 429)},
)
async def session_result(
    caller: AuthedCaller,
    service: Service,
    session_id: Annotated[str, PathParam(alias="sessionId", max_length=128)],
) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(service.result, caller, session_id))


def upload_base_url(config: ServerConfig, scope: Scope) -> str:
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
    raise ApiError.of(
        codes.SERVER_MISCONFIGURED,
        "This server listens on a non-loopback address without VITALCAM_PUBLIC_BASE_URL, so it cannot "
        "build upload URLs (it never takes them from request headers)",
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
