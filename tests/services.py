"""Real PostgreSQL, Redis and S3-speaking servers on 127.0.0.1 with ephemeral ports, for the scaled tests.

Each is the real server program (Debian's postgresql and redis-server, moto's standalone S3 server),
started in a temporary directory and stopped at the end; tests can kill and restart them. When a program
is missing the tests that need it are skipped, unless VITALCAM_REQUIRE_SCALED=1 (set by .ci/run), which
turns the skip into a failure so CI can never silently leave the scaled configuration untested.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def _pg_bin() -> Path:
    """The newest Debian PostgreSQL (`/usr/lib/postgresql/<major>/bin`), whichever release installed it."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


def require(what: str) -> None:
    """Skip (or, in CI, fail) a test that needs a server program this machine lacks."""
    message = f"{what} is not installed (.ci/run installs it)"
    if os.environ.get("VITALCAM_REQUIRE_SCALED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the Debian package's `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class Postgres:
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://vitalcam@127.0.0.1:{self.port}/vitalcam"

    @property
    def data(self) -> Path:
        return self.root / "pgdata"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            [*_as_postgres_user(), str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "vitalcam",
             "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.start()
        subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "vitalcam", "vitalcam"],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*_as_postgres_user(), str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 30
        while time.time() < deadline:
            ready = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not start")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: "fast" (clean) or "immediate" (as if the server crashed)."""
        if self.process is not None and self.process.poll() is None:
            subprocess.run(
                [
                    *_as_postgres_user(),
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "stop",
                    "-m",
                    mode,
                    "-w",
                ],
                check=False,
                capture_output=True,
            )
            self.process.wait(30)
        self.process = None

    def psql(self, sql: str) -> str:
        out = subprocess.run(
            [str(PG_BIN / "psql"), self.url, "-At", "-c", sql], check=True, capture_output=True, text=True
        )
        return out.stdout


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A fresh cluster in its own directory under /tmp (pytest's tmp_path is root-only; postgres is not)."""
    if not (PG_BIN / "postgres").exists():
        require("PostgreSQL (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="vitalcam-pg-", dir="/tmp"))
    root.chmod(0o755)
    server = Postgres(root)
    try:
        server.init()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


class AckLosingProxy:
    """A TCP proxy in front of PostgreSQL that can lose one acknowledgement, the fault a dropped link or
    a failover causes: the write commits but its answer never arrives, so the client cannot tell.

    `lose_ack(marker, skip=k)` arms it: of the statements whose bytes carry `marker` (a session id) and
    that change a row, the first k pass and the next one is forwarded, PostgreSQL runs it (the stores
    use autocommit, so it is committed when the answer is sent), and the proxy closes that connection
    instead of delivering the answer ("UPDATE 1" or "DELETE 1"). Everything else passes untouched.
    """

    def __init__(self, upstream: Postgres) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._skip = 0
        self._lost = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return self.upstream.url.replace(f":{self.upstream.port}/", f":{self.port}/")

    def lose_ack(self, marker: str, *, skip: int = 0) -> threading.Event:
        """Lose the answer to the row change carrying `marker` after `skip` of them; the event is set
        once it has."""
        with self._lock:
            self._marker, self._skip, self._lost = marker.encode(), skip, threading.Event()
            return self._lost

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> AckLosingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream.port))
            except OSError:  # PostgreSQL is down: the client sees the connection refused, as it would
                _close_both(client)
                continue
            carrying = threading.Event()  # the statement in flight on this connection carries the marker
            threading.Thread(target=self._to_server, args=(client, server, carrying), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, carrying), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket, carrying: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                with self._lock:
                    if self._marker is not None and self._marker in chunk:
                        carrying.set()
                server.sendall(chunk)
        _close_both(client, server)

    def _to_client(self, server: socket.socket, client: socket.socket, carrying: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while chunk := server.recv(65536):
                with self._lock:
                    changed = b"UPDATE 1\x00" in chunk or b"DELETE 1\x00" in chunk
                    if carrying.is_set() and self._marker is not None and changed:
                        if self._skip == 0:
                            self._marker = None
                            self._lost.set()
                            break
                        self._skip -= 1
                carrying.clear()
                client.sendall(chunk)
        _close_both(client, server)


def _close_both(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@dataclass
class Redis:
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # No RDB snapshots and no AOF: queue entries live in memory only, never on disk.
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def redis(root: Path) -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        require("Redis (Debian package redis-server)")
    root.mkdir(parents=True, exist_ok=True)
    server = Redis(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class S3Server:
    """moto's standalone server: an emulator, but it speaks the S3 HTTP API, so boto3 talks real HTTP."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blob_store_url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.endpoint}&region=us-east-1"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
        )  # fmt: skip
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        require("moto[server] (the dev extra)")
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
