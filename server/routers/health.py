from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from contract import __version__
from server.models import HealthResponse

router = APIRouter(tags=["service"])


@router.get("/health", response_model=HealthResponse, summary="Liveness check")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok", "version": __version__})
