"""API key administration for `vitalcam keys ...`: works on the data directory whether or not a server runs.

Keys look like `ck_test_` / `ck_live_` followed by 48 hex digits (192 random bits). Only a SHA-256 of the
key is stored; the public id shown by `list_keys` is the prefix plus the first 12 hex digits, enough to
revoke a key without ever displaying it again.
"""

from __future__ import annotations

from pathlib import Path

from server.storage import KeyInfo, Store, key_id_of


def create_key(data_dir: Path | str, developer: str, live: bool = False) -> str:
    """Create a key for `developer` (created on first use) and return it; this is the only time it is shown."""
    store = Store(Path(data_dir))
    try:
        return store.create_key(developer, live=live)
    finally:
        store.close()


def revoke_key(data_dir: Path | str, key_id: str) -> None:
    """Revoke by public id (or an unambiguous prefix of it, or the full key); KeyError if nothing matches."""
    key_id = key_id.strip()
    if not key_id:
        raise KeyError("empty key id")
    store = Store(Path(data_dir))
    try:
        store.revoke_key(key_id_of(key_id) or key_id)
    finally:
        store.close()


def list_keys(data_dir: Path | str) -> list[KeyInfo]:
    """Every key with its developer, mode and revocation time; never a secret or a hash."""
    store = Store(Path(data_dir))
    try:
        return store.list_keys()
    finally:
        store.close()


__all__ = ["KeyInfo", "create_key", "list_keys", "revoke_key"]
