"""Presigned upload URLs: HMAC-SHA256 over the method, session id and expiry, with the server secret.

The signature binds the URL to one session and one expiry, so a URL cannot be replayed against another
session or stretched past the session's lifetime; the secret lives in the data dir so URLs handed out
before a restart still work after it.

What is signed is the exact text of the URL's parameters, and only their canonical form is accepted (an
expiry is a decimal integer without sign, spaces or leading zeros): a verifier that parsed the expiry first
and signed the number would accept `expires=0…` and other spellings the signer never produced.
"""

from __future__ import annotations

import hashlib
import hmac
import re

# Canonical Unix times as `str(int)` writes them: 1..12 ASCII digits, no leading zero.
_CANONICAL_EXPIRES = re.compile(r"[1-9][0-9]{0,11}")


def _signed_text(session_id: str, expires: str) -> bytes:
    return f"PUT\n/sdk/upload/{session_id}\n{expires}".encode()


def sign_upload(secret: bytes, session_id: str, expires_at: int) -> str:
    return hmac.new(secret, _signed_text(session_id, str(expires_at)), hashlib.sha256).hexdigest()


def upload_url(base_url: str, secret: bytes, session_id: str, expires_at: int) -> str:
    signature = sign_upload(secret, session_id, expires_at)
    return f"{base_url.rstrip('/')}/sdk/upload/{session_id}?expires={expires_at}&signature={signature}"


def verify_upload(secret: bytes, session_id: str, expires: str | None, signature: str | None) -> int | None:
    """The signed expiry when `signature` is genuine for exactly this text, else None.

    The expiry itself is checked by the caller.
    """
    if not expires or not signature or _CANONICAL_EXPIRES.fullmatch(expires) is None:
        return None
    expected = hmac.new(secret, _signed_text(session_id, expires), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return None
    return int(expires)
