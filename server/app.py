"""The sessions API as a FastAPI app, assembled: stores, inference runner, service, routers, middleware.

Layers, outside in: `middleware` (request ids, limit headers, bounded JSON bodies checked against the key
before they are read) → `routers` (HTTP to service calls) with `dependencies` (the service, the
authenticated and rate-limited caller) → `service.SessionService` (the rules and the state machine) →
`stores` (`SessionStore`, `BlobStore`) and `jobs` (where inference runs). Connections that never finish
their headers are closed by the protocol class in server/runner.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from contract import __version__
from contract import errors as codes
from server.config import ServerConfig
from server.errors import error_response, install_error_handlers, unavailable_message
from server.jobs import InferenceRunner, InProcessRunner
from server.middleware import RequestGuardMiddleware, ResponseHeadersMiddleware, limit_headers
from server.processing import InferFn, default_infer
from server.routers import health as health_routes
from server.routers import sessions as session_routes
from server.routers import uploads as upload_routes
from server.secret import load_or_create_secret
from server.service import SessionService
from server.stores import open_blob_store, open_session_store
from server.stores.base import BlobStore, SessionStore, StoreUnavailable


def create_app(
    config: ServerConfig,
    *,
    infer: InferFn | None = None,
    sessions: SessionStore | None = None,
    blobs: BlobStore | None = None,
    runner: InferenceRunner | None = None,
) -> FastAPI:
    """The app for one configuration; `infer` replaces the inference engine (benchmarks, tests), and the
    stores and runner can be passed in (contract tests), else they come from `config`."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = sessions if sessions is not None else open_session_store(config)
    blobs = blobs if blobs is not None else open_blob_store(config)
    if runner is None:
        runner = _runner(config, sessions, blobs, infer or default_infer)
    service = SessionService(
        config,
        sessions,
        blobs,
        load_or_create_secret(config.data_dir),
        runner,
        single_process=config.single_process,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.recover)
        sweeper = asyncio.create_task(service.sweep_forever())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await service.close()

    app = FastAPI(
        title="vitalcam reference backend",
        version=__version__,
        description="The vitalcam sessions API: start a session, PUT the tensor, upload-complete, result.",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.include_router(health_routes.router)
    app.include_router(session_routes.router)
    app.include_router(upload_routes.router)
    app.add_middleware(RequestGuardMiddleware, config=config, authenticate=service.authenticate)
    app.add_middleware(ResponseHeadersMiddleware)  # outer: runs first, so every answer has the headers
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented override
    return app


def _runner(
    config: ServerConfig, sessions: SessionStore, blobs: BlobStore, infer: InferFn
) -> InferenceRunner:
    if config.queue_url:
        from server.queue import QueueRunner

        return QueueRunner(config, sessions)
    return InProcessRunner(blobs, infer, config.inference_workers)


async def _store_unavailable(_: Request, exc: Exception) -> JSONResponse:
    code = codes.SERVICE_UNAVAILABLE
    return error_response(
        code.http_status,
        code.code,
        unavailable_message(exc),
        code.retryable,
        headers={"Retry-After": "2"},
    )


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
