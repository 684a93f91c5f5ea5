"""Presigned upload URLs: HMAC-SHA256 over the method, session id and expiry, with the server secret.

The signature binds the URL to one session and one expiry, so a URL cannot be replayed against another
session or stretched past the session's lifetime; the secret lives in the data dir so URLs handed out
before a restart still work after it.
"""

from __future__ import annotations

import hashlib
import hmac


def sign_upload(secret: bytes, session_id: str, expires_at: int) -> str:
    message = f"PUT\n/sdk/upload/{session_id}\n{expires_at}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def upload_url(base_url: str, secret: bytes, session_id: str, expires_at: int) -> str:
    signature = sign_upload(secret, session_id, expires_at)
    return f"{base_url.rstrip('/')}/sdk/upload/{session_id}?expires={expires_at}&signature={signature}"


def verify_upload(secret: bytes, session_id: str, expires: str | None, signature: str | None) -> int | None:
    """The signed expiry when `signature` is genuine, else None (expiry is checked by the caller)."""
    if not expires or not signature or not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return None
    expected = sign_upload(secret, session_id, int(expires))
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return None
    return int(expires)
