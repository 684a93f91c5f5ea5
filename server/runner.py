"""Running the app: `serve` (blocking, for `vitalcam serve`) and `start_embedded` (a background thread).

The embedded server is the real server on a real socket: `vitalcam measure` without `--api-url` and the
tests talk to it over HTTP exactly as they would to a deployed backend, so nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import multiprocessing
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.app import create_app
from server.config import ServerConfig
from server.keys import create_key, list_keys
from server.processing import InferFn
from server.stores.base import StoreUnavailable

log = logging.getLogger("vitalcam.server")

_START_TIMEOUT_S = 15.0
# `serve --workers N` replaces an API process that exits, unless that happens this often: then it stops.
_RESPAWN_LIMIT = 5
_RESPAWN_WINDOW_S = 60.0


class UnsafeBindError(ValueError):
    """`serve` was asked to listen beyond loopback without a public URL to put in upload URLs."""


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: Path | str | None = None,
    *,
    log_level: str = "info",
    workers: int = 1,
    database_url: str | None = None,
    blob_store: str | None = None,
    queue_url: str | None = None,
) -> None:
    """Run the reference backend until interrupted; configuration comes from the environment.

    `workers` > 1 runs that many API processes on one listening socket; they share state only through
    the database, so they need `database_url` (PostgreSQL). Raises UnsafeBindError for a non-loopback
    `host` without VITALCAM_PUBLIC_BASE_URL: upload URLs are never built from request headers, so such a
    server would have no trustworthy address to hand out.
    """
    config = ServerConfig.from_env(
        data_dir=Path(data_dir) if data_dir is not None else None,
        database_url=database_url,
        blob_store=blob_store,
        queue_url=queue_url,
    )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and not config.database_url:
        raise ValueError(
            "--workers above 1 needs --database-url (PostgreSQL): SQLite is the single-process default"
        )
    if config.scaled or workers > 1:
        config = config.with_overrides(single_process=False)
    check_bind(host, config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        keys = list_keys(config.data_dir, database_url=config.database_url)
    except StoreUnavailable as exc:  # said in one line by `vitalcam serve`, not as a traceback
        raise ValueError(f"cannot start: {exc}") from exc
    if not any(k.active for k in keys):
        log.warning(
            "no active API keys; create one with: vitalcam keys create --developer NAME%s",
            f" --database-url {config.database_url}"
            if config.database_url
            else f" --data-dir {config.data_dir}",
        )
    if workers == 1:
        _serve_one(config, host, port, log_level, None)
        return
    _serve_many(config, host, port, log_level, workers)


def _serve_one(
    config: ServerConfig, host: str, port: int, log_level: str, sock: socket.socket | None
) -> None:
    server = uvicorn.Server(uvicorn_config(create_app(config), config, host, port, log_level))
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock] if sock is not None else None)
    if not server.started:  # e.g. the port is taken; uvicorn has logged why (uvicorn.run exits 3 too)
        raise SystemExit(STARTUP_FAILURE)


def _serve_many(config: ServerConfig, host: str, port: int, log_level: str, workers: int) -> None:
    """One listening socket, `workers` spawned API processes accepting on it; SIGINT/SIGTERM stop all.

    An API process that dies (a crash, the OOM killer) is replaced; if they keep dying (_RESPAWN_LIMIT
    within _RESPAWN_WINDOW_S, e.g. the database is unreachable at start) the server stops, non-zero."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        raise SystemExit(STARTUP_FAILURE) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("spawn")

    def spawn(i: int) -> multiprocessing.process.BaseProcess:
        child = context.Process(
            target=_serve_one, args=(config, host, port, log_level, sock), name=f"vitalcam-api-{i}"
        )
        child.start()
        return child

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[multiprocessing.process.BaseProcess] = []
    failed = False
    try:
        children = [spawn(i) for i in range(workers)]
        replaced_at: list[float] = []
        while not stop.wait(0.5):
            for i, child in enumerate(children):
                if child.is_alive() or stop.is_set():
                    continue
                now_s = time.monotonic()
                replaced_at = [t for t in replaced_at if now_s - t < _RESPAWN_WINDOW_S]
                if len(replaced_at) >= _RESPAWN_LIMIT:
                    log.error(
                        "API processes keep exiting (%d replaced within %g s); stopping: see their errors above",
                        len(replaced_at),
                        _RESPAWN_WINDOW_S,
                    )
                    failed = True
                    stop.set()
                    break
                log.warning("API process %s exited (%s); starting a replacement", child.pid, child.exitcode)
                replaced_at.append(now_s)
                children[i] = spawn(i)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # uvicorn finishes in-flight requests on SIGTERM
        for child in children:
            child.join(30)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if failed:
        raise SystemExit(STARTUP_FAILURE)


def check_bind(host: str, config: ServerConfig) -> None:
    """Refuse a non-loopback address unless upload URLs have a configured public base."""
    if config.public_base_url is None and not is_loopback_host(host):
        raise UnsafeBindError(
            f"refusing to serve on {host!r} without VITALCAM_PUBLIC_BASE_URL: set it to the URL clients use "
            "to reach this server (e.g. https://vitals.example), or bind to 127.0.0.1"
        )


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; a hostname or a wildcard (0.0.0.0, ::) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def uvicorn_config(
    app: Any, config: ServerConfig, host: str, port: int, log_level: str, **extra: Any
) -> uvicorn.Config:
    """The one uvicorn configuration both `serve` and `start_embedded` use.

    Forwarded headers are believed only from `config.trusted_proxies` (uvicorn's default trusts loopback,
    i.e. every local process); connections that do not finish their headers in `header_timeout_s` are
    closed by `header_timeout_protocol`.
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=header_timeout_protocol(config.header_timeout_s),
        proxy_headers=bool(config.trusted_proxies),
        forwarded_allow_ips=list(config.trusted_proxies),
        **extra,
    )


def header_timeout_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, plus a deadline for receiving each request's headers.

    uvicorn times out only idle keep-alive connections, and cancels even that timer on the first byte
    received; a connection that sends nothing, half a request line, or trickles a body after the response,
    is otherwise held for ever. Here, whenever no request is being handled (from the connection opening,
    and from each response's end) the next request's headers must be complete within `header_timeout_s`,
    however the bytes trickle in, or the connection is closed. Stalled bodies are the app's business
    (`body_timeout_s`), because only the app knows when it is waiting for one.
    """

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._arm_header_timer()  # first: super() may start a pipelined request, which disarms it
            super().on_response_complete()

        def handle_events(self) -> None:
            super().handle_events()
            if self._handling_request():
                self._disarm_header_timer()

        def _handling_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._on_header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if not self._handling_request() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol


@dataclass
class EmbeddedServer:
    """A server on 127.0.0.1 in a background thread; `stop()` shuts it down (and removes a temp data dir)."""

    base_url: str
    api_key: str
    config: ServerConfig
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _temp_dir: Path | None = field(default=None, repr=False)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish in-flight requests, stop the thread, and delete the data dir if we created it."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_embedded(
    *,
    persist_vitals: bool = False,
    data_dir: Path | str | None = None,
    developer: str = "embedded",
    port: int = 0,
    infer: InferFn | None = None,
    **config_overrides: Any,
) -> EmbeddedServer:
    """Start the real server on 127.0.0.1 (ephemeral port by default) and return once it accepts requests.

    Without `data_dir` a temporary one is used and deleted on stop. A fresh `ck_test_` key for
    `developer` is created either way. The environment is not read, so the embedded server behaves the
    same on every machine; pass config fields as keyword arguments instead. `infer` replaces the
    inference engine (benchmarks and tests only).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="vitalcam-server-")) if data_dir is None else None
    root = temp_dir if temp_dir is not None else Path(data_dir)  # type: ignore[arg-type]
    try:
        config = ServerConfig(data_dir=root, persist_vitals=persist_vitals, **config_overrides)
        if config.scaled and "single_process" not in config_overrides:
            config = config.with_overrides(single_process=False)  # other processes share its stores
        api_key = create_key(config.data_dir, developer, live=False, database_url=config.database_url)
        app = create_app(config, infer=infer)
        server = uvicorn.Server(uvicorn_config(app, config, "127.0.0.1", port, "warning", lifespan="on"))
        thread = threading.Thread(target=server.run, name="vitalcam-embedded-server", daemon=True)
        thread.start()
        if not _wait_started(server, thread):
            server.should_exit = True
            thread.join(5.0)
            raise RuntimeError("embedded vitalcam server did not start")
        bound_port = server.servers[0].sockets[0].getsockname()[1]
    except BaseException:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return EmbeddedServer(f"http://127.0.0.1:{bound_port}", api_key, config, server, thread, temp_dir)


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> bool:
    event = threading.Event()
    deadline_steps = int(_START_TIMEOUT_S / 0.01)
    for _ in range(deadline_steps):
        if server.started:
            return True
        if not thread.is_alive():
            return False
        event.wait(0.01)
    return False
