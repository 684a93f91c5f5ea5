"""API key administration for `vitalcam keys ...`: works on the store whether or not a server runs.

Keys look like `ck_test_` / `ck_live_` followed by 48 hex digits (192 random bits). Only a SHA-256 of the
key is stored; the public id shown by `list_keys` is the prefix plus the first 12 hex digits, enough to
revoke a key without ever displaying it again. The store is the data directory's SQLite file, or the
PostgreSQL database of `database_url` (the one `vitalcam serve --database-url` uses).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from server.config import ServerConfig
from server.stores import open_session_store
from server.stores.base import KeyInfo, SessionStore, key_id_of

T = TypeVar("T")


def _with_store(data_dir: Path | str, database_url: str | None, action: Callable[[SessionStore], T]) -> T:
    store = open_session_store(ServerConfig(data_dir=Path(data_dir), database_url=database_url))
    try:
        return action(store)
    finally:
        store.close()


def create_key(
    data_dir: Path | str, developer: str, live: bool = False, *, database_url: str | None = None
) -> str:
    """Create a key for `developer` (created on first use) and return it; this is the only time it is shown."""
    return _with_store(data_dir, database_url, lambda store: store.create_key(developer, live=live))


def revoke_key(data_dir: Path | str, key_id: str, *, database_url: str | None = None) -> None:
    """Revoke by public id (or an unambiguous prefix of it, or the full key); KeyError if nothing matches."""
    key_id = key_id.strip()
    if not key_id:
        raise KeyError("empty key id")
    _with_store(data_dir, database_url, lambda store: store.revoke_key(key_id_of(key_id) or key_id))


def list_keys(data_dir: Path | str, *, database_url: str | None = None) -> list[KeyInfo]:
    """Every key with its developer, mode and revocation time; never a secret or a hash."""
    return _with_store(data_dir, database_url, lambda store: store.list_keys())


__all__ = ["KeyInfo", "create_key", "list_keys", "revoke_key"]
