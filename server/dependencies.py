"""What routes ask FastAPI for: the session service of this app, and an authenticated, rate-limited caller."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from server.service import Caller, RateLimited, SessionService

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="ck_test_… or ck_live_… key")


def get_service(request: Request) -> SessionService:
    """The app's service (one per app, so several servers can run in one process)."""
    service: SessionService = request.app.state.service
    return service


Service = Annotated[SessionService, Depends(get_service)]


def authenticate(
    request: Request, service: Service, api_key: Annotated[str | None, Security(api_key_header)] = None
) -> Caller:
    """Check the key and count the request against the key's hourly limit (401 / 429 otherwise).

    A sync dependency, so FastAPI runs it (and its store round trips) in the thread pool. The limits are
    left in the request state, where the response-headers middleware finds them, even for a 429.
    """
    try:
        caller = service.admit(api_key, time.time())
    except RateLimited as limited:
        request.state.limits = (limited.caller.rate, limited.caller.usage)
        raise limited.error from None
    request.state.limits = (caller.rate, caller.usage)
    return caller


AuthedCaller = Annotated[Caller, Depends(authenticate)]
