"""Stores behind the session service: pick the implementations a configuration names.

`SessionStore`: SQLite in the data directory (default) or PostgreSQL (`database_url`). `BlobStore`: a
folder in the data directory (default) or an S3-compatible bucket (`blob_store = s3://bucket?...`).
The heavier drivers are imported only when configured, so the embedded default needs none of them.
"""

from __future__ import annotations

from server.config import ServerConfig
from server.stores.base import BlobStore, SessionStore


def open_session_store(config: ServerConfig) -> SessionStore:
    if config.database_url:
        from server.stores.postgres import PostgresSessionStore

        return PostgresSessionStore(config.database_url)
    from server.stores.sqlite import SqliteSessionStore

    return SqliteSessionStore(config.data_dir)


def open_blob_store(config: ServerConfig) -> BlobStore:
    if config.blob_store and config.blob_store.startswith("s3://"):
        from server.stores.s3 import S3BlobStore

        return S3BlobStore.from_url(config.blob_store, ttl_s=config.session_ttl_s)
    from server.stores.files import FileBlobStore

    return FileBlobStore(config.data_dir)


__all__ = ["BlobStore", "SessionStore", "open_blob_store", "open_session_store"]
