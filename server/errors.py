"""One error shape for everything the server answers: `{"error": CODE, "message": ..., "retryable": bool}`.

FastAPI's own errors (validation 422s, unknown routes, wrong methods) are mapped onto it too, so a client
needs exactly one parser for failures whatever produced them.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract import errors as codes
from contract.errors import ErrorCode

log = logging.getLogger("vitalcam.server")

# The code for HTTP-level refusals that FastAPI or Starlette raise themselves (unknown route, wrong method).
_HTTP_CODES: dict[int, ErrorCode] = {
    400: codes.INVALID_REQUEST,
    401: codes.API_KEY_INVALID,
    403: codes.FORBIDDEN,
    404: codes.NOT_FOUND,
    405: codes.METHOD_NOT_ALLOWED,
    408: codes.REQUEST_TIMEOUT,
    413: codes.PAYLOAD_TOO_LARGE,
    415: codes.INVALID_REQUEST,
}


class ApiError(Exception):
    """Raised anywhere in a request to answer with the standard error body."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.retryable = retryable
        self.headers = headers or {}

    @classmethod
    def of(cls, code: ErrorCode, message: str, *, headers: dict[str, str] | None = None) -> ApiError:
        """The error for one code of the contract's table, with its status and retryable flag."""
        return cls(code.http_status, code.code, message, retryable=code.retryable, headers=headers)


def error_response(
    status_code: int, code: str, message: str, retryable: bool = False, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The standard error body. Messages may quote client input (a field name, a tensor name), which can
    hold lone surrogates that UTF-8 cannot encode; they are escaped rather than turning a 400 into a 500."""
    safe_message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(
        {"error": code, "message": safe_message, "retryable": retryable},
        status_code=status_code,
        headers=headers,
    )


def invalid_key() -> ApiError:
    """The single 401 for missing, malformed, unknown and revoked keys: nothing tells them apart."""
    return ApiError.of(codes.API_KEY_INVALID, "Invalid, revoked, or missing API key")


def unavailable_message(exc: Exception) -> str:
    """The message of 503 SERVICE_UNAVAILABLE: which service, and that repeating the request is safe."""
    return f"A storage service is unavailable ({str(exc)[:200]}); nothing was lost, retry shortly"


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status_code, exc.code, exc.message, exc.retryable, exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(400, codes.INVALID_REQUEST.code, validation_message(exc))


def validation_message(exc: RequestValidationError) -> str:
    """'demographics.age: Input should be less than or equal to 120' — the field first, then the rule."""
    parts = []
    for error in exc.errors()[:3]:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "body"
        if error.get("type") == "json_invalid":
            field = "body"
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, codes.HTTP_ERROR)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, code.code, message, code.retryable, dict(exc.headers or {}))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500, codes.INTERNAL_ERROR.code, "Internal server error", codes.INTERNAL_ERROR.retryable
    )
