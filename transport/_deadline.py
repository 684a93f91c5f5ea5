"""Whole-request deadlines, which httpx does not have.

httpx's timeouts bound each socket operation, so a server that sends one byte per second keeps every read
within its timeout and a request running for ever. Here every socket operation of a request waits at most
until that request's deadline (already cut to the enclosing `measure()` deadline by the workflow), so a
request can overrun its deadline by at most one write slice.

The deadline travels in a context variable (per thread, per asyncio task), so one client may run several
requests concurrently, and it is applied by wrapping the network backend of each connection pool the
client owns (`enforce_deadlines`). A transport without such a pool (`httpx.MockTransport`, a custom
one) gets the deadline checked between response chunks only.
"""

from __future__ import annotations

import contextlib
import time
import typing
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

import httpcore
import httpx

_REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("vitalcam_request_deadline", default=None)
# A write is split so that a peer reading slowly can hold one socket send, not the whole chunk.
_WRITE_SLICE_BYTES = 64 * 1024


@contextlib.contextmanager
def request_deadline(deadline_s: float) -> Iterator[None]:
    """Run one request (monotonic `deadline_s`) with every socket operation bounded by it."""
    token = _REQUEST_DEADLINE.set(deadline_s)
    try:
        yield
    finally:
        _REQUEST_DEADLINE.reset(token)


def _bounded(timeout: float | None, timeout_error: type[Exception]) -> float | None:
    deadline_s = _REQUEST_DEADLINE.get()
    if deadline_s is None:
        return timeout
    left_s = deadline_s - time.monotonic()
    if left_s <= 0:
        raise timeout_error("the request's deadline passed")
    return left_s if timeout is None else min(timeout, left_s)


class DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write ends by the current request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), _WRITE_SLICE_BYTES):
            piece = buffer[start : start + _WRITE_SLICE_BYTES]
            self._stream.write(piece, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: typing.Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._backend.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._backend.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    """Async twin of DeadlineStream."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), _WRITE_SLICE_BYTES):
            piece = buffer[start : start + _WRITE_SLICE_BYTES]
            await self._stream.write(piece, _bounded(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: typing.Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return AsyncDeadlineStream(await self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = await self._backend.connect_tcp(host, port, bounded, local_address, socket_options)
        return AsyncDeadlineStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[typing.Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return AsyncDeadlineStream(await self._backend.connect_unix_socket(path, bounded, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def enforce_deadlines(client: httpx.Client | httpx.AsyncClient) -> int:
    """Wrap the network backend of every connection pool of `client`; returns how many were wrapped.

    Reaches into httpx/httpcore attributes (`_transport`, `_mounts`, `_pool`, `_network_backend`), which
    is why the versions are pinned and tests/test_transport_hardening.py proves the deadline holds.
    """
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    wrapped = 0
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None or isinstance(backend, DeadlineBackend | AsyncDeadlineBackend):
            continue
        if isinstance(client, httpx.AsyncClient):
            pool._network_backend = AsyncDeadlineBackend(backend)  # type: ignore[union-attr]
        else:
            pool._network_backend = DeadlineBackend(backend)  # type: ignore[union-attr]
        wrapped += 1
    return wrapped


__all__ = ["enforce_deadlines", "request_deadline"]
