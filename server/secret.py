"""The HMAC key that signs upload URLs, kept apart from any store.

It is created once in the data directory (mode 0600) so that upload URLs handed out before a restart still
work after it, and so that several API processes on one host sign and verify the same URLs. A deployment
whose API processes share no disk sets `VITALCAM_SERVER_SECRET` (64 hex digits) in each of them instead.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Final

SECRET_NAME: Final = "server_secret"
SECRET_ENV: Final = "VITALCAM_SERVER_SECRET"
_SECRET_BYTES: Final = 32


def load_or_create_secret(data_dir: Path, env: dict[str, str] | None = None) -> bytes:
    """`VITALCAM_SERVER_SECRET` when set, else the data directory's secret file (created on first use)."""
    explicit = (os.environ if env is None else env).get(SECRET_ENV, "").strip()
    if explicit:
        try:
            secret = bytes.fromhex(explicit)
        except ValueError:
            raise ValueError(f"{SECRET_ENV} must be hex digits") from None
        if len(secret) < _SECRET_BYTES:
            raise ValueError(
                f"{SECRET_ENV} must hold at least {_SECRET_BYTES} bytes ({2 * _SECRET_BYTES} hex digits)"
            )
        return secret
    path = Path(data_dir) / SECRET_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(_SECRET_BYTES))
    for _ in range(50):  # another process may have created it a moment ago and not written it yet
        text = path.read_text().strip()
        if text:
            return bytes.fromhex(text)
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it to generate a new server secret")
