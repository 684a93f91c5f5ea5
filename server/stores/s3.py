"""The S3-compatible `BlobStore` (boto3): clients PUT the tensor straight to the bucket.

`upload_url` is a presigned PUT (SigV4) for exactly the session's object key, valid until the session
expires, so the bytes never pass through the API ("the upload goes directly to secure cloud storage").
A presigned PUT cannot carry a size limit (only POST policies can), so the limit is applied when
upload-complete reads the object: over `max_upload_bytes` it is a 413 and the object is deleted; a bad
tensor is a 400 and the session returns to `created` (docs/api.md). Objects are deleted on every privacy
cleanup, and a lifecycle rule on the prefix expires anything left behind (a crash between the response
and the delete) after one day, the shortest expiry S3 lifecycle rules allow.

Configured as `s3://BUCKET?endpoint=URL&region=NAME&prefix=uploads/`; credentials come from boto3's usual
chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role), never from the URL.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.exceptions
from botocore.config import Config

from server.stores.base import StoreUnavailable, checked_session_id

LIFECYCLE_RULE_ID = "vitalcam-uploads-backstop"
_ALREADY_EXISTS = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
)


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    endpoint: str | None
    region: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"blob store must look like s3://bucket?endpoint=...&region=..., got {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region", "prefix"}
        if unknown:
            raise ValueError(
                f"unknown s3:// options: {', '.join(sorted(unknown))} (endpoint, region, prefix)"
            )
        prefix = query.get("prefix", "uploads/")
        return cls(parts.netloc, query.get("endpoint"), query.get("region", "us-east-1"), prefix)


class S3BlobWriter:
    """An API-routed upload into the bucket (not used when clients PUT to presigned URLs): the body is
    bounded by the upload limit before it gets here, and is sent as one object on commit."""

    def __init__(self, store: S3BlobStore, session_id: str) -> None:
        self._store = store
        self._session_id = checked_session_id(session_id)
        self._buffer: io.BytesIO | None = io.BytesIO()

    def write(self, chunk: bytes) -> None:
        if self._buffer is None:
            raise ValueError("upload already finished")
        self._buffer.write(chunk)

    def commit(self) -> None:
        if self._buffer is None:
            raise ValueError("upload already finished")
        data, self._buffer = self._buffer.getvalue(), None
        self._store.put(self._session_id, data)

    def discard(self) -> None:
        self._buffer = None


class S3BlobStore:
    direct_uploads = True

    def __init__(self, location: S3Location, *, ttl_s: int, client: Any = None) -> None:
        self.location = location
        self.ttl_s = ttl_s
        self._s3 = client or boto3.client(
            "s3",
            endpoint_url=location.endpoint,
            region_name=location.region,
            config=Config(
                signature_version="s3v4",
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int) -> S3BlobStore:
        store = cls(S3Location.parse(url), ttl_s=ttl_s)
        store.ensure_bucket()
        return store

    def key(self, session_id: str) -> str:
        return f"{self.location.prefix}{checked_session_id(session_id)}.bin"

    def ensure_bucket(self) -> None:
        """Create the bucket if missing and install the lifecycle backstop on our prefix."""
        with self._reachable():
            try:
                self._s3.head_bucket(Bucket=self.location.bucket)
            except botocore.exceptions.ClientError:
                try:
                    self._s3.create_bucket(Bucket=self.location.bucket)
                except botocore.exceptions.ClientError as exc:  # another process starting made it first
                    if exc.response.get("Error", {}).get("Code") not in _ALREADY_EXISTS:
                        raise
            self._s3.put_bucket_lifecycle_configuration(
                Bucket=self.location.bucket,
                LifecycleConfiguration={
                    "Rules": [
                        {
                            "ID": LIFECYCLE_RULE_ID,
                            "Filter": {"Prefix": self.location.prefix},
                            "Status": "Enabled",
                            "Expiration": {"Days": 1},
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                        }
                    ]
                },
            )

    def presigned_put_url(self, session_id: str, expires_at: int, max_bytes: int) -> str | None:
        expires_in_s = max(1, expires_at - int(time.time()))
        url: str = self._s3.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.location.bucket, "Key": self.key(session_id)},
            ExpiresIn=expires_in_s,
            HttpMethod="PUT",
        )
        return url

    @contextlib.contextmanager
    def writer(self, session_id: str) -> Iterator[S3BlobWriter]:
        writer = S3BlobWriter(self, session_id)
        try:
            yield writer
        finally:
            writer.discard()

    def put(self, session_id: str, data: bytes) -> None:
        with self._reachable():
            self._s3.put_object(Bucket=self.location.bucket, Key=self.key(session_id), Body=data)

    def read(self, session_id: str, max_bytes: int) -> bytes | None:
        key = self.key(session_id)
        with self._reachable():
            try:
                head = self._s3.head_object(Bucket=self.location.bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
            if int(head["ContentLength"]) > max_bytes:
                raise ValueError(f"stored upload exceeds the {max_bytes}-byte limit")
            obj = self._s3.get_object(Bucket=self.location.bucket, Key=key)
            data: bytes = obj["Body"].read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"stored upload exceeds the {max_bytes}-byte limit")
        return data

    def delete(self, session_id: str) -> None:
        with self._reachable():
            self._s3.delete_object(Bucket=self.location.bucket, Key=self.key(session_id))

    def discard_partials(self) -> None:
        """Nothing to do: S3 never shows half an object, and the lifecycle rule aborts stale multiparts."""

    def close(self) -> None:
        self._s3.close()

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"object store unreachable: {exc}") from exc
        except botocore.exceptions.ClientError as exc:
            if (_status(exc) or 0) >= 500:
                raise StoreUnavailable(f"object store error: {exc}") from exc
            raise


def _status(exc: botocore.exceptions.ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None
