"""The two configurations the server's contract tests run against, behind one small interface.

`EmbeddedDeployment`: SQLite + a folder + in-process inference (the default), the real app on a real
socket in this process. `ScaledDeployment`: PostgreSQL + an S3 server (moto's) + arq on Redis, with
`vitalcam serve --workers 2` (two API processes on one socket) and two `vitalcam worker` processes
(tests/fault_worker.py: the CLI's worker with a switch to hang a job until it is killed). Both run the
installed inference engine. A new configuration is one more `Deployment` subclass and one fixture branch.

Only what a test must look at from outside goes through here: keys, a direct handle on the session store
(to fill counters up to a limit without thousands of requests), moving a session's expiry into the past,
and where anything of a session is still stored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from server import ServerConfig, create_key, start_embedded
from server.stores import open_session_store
from server.stores.base import SessionStore
from server.stores.sqlite import DB_NAME
from tests import services
from tests.fault_worker import CONTROL_ENV

ROOT = Path(__file__).resolve().parents[1]
RATE_LIMIT = 60
QUOTA = 20
SWEEP_S = 0.2
JOB_TIMEOUT_S = 6.0  # a killed worker's job is taken again JOB_TIMEOUT_S + 10 s after it was taken


class Deployment:
    name: str
    base_url: str
    api_key: str
    config: ServerConfig
    # True when clients PUT to the object store: the API sees the tensor only at upload-complete.
    direct_uploads: bool

    def new_key(self, developer: str) -> str:
        """A key of a new developer: its own hourly window and monthly quota."""
        return create_key(self.config.data_dir, developer, database_url=self.config.database_url)

    @contextlib.contextmanager
    def store(self) -> Iterator[SessionStore]:
        """The deployment's session store, opened from the test process."""
        store = open_session_store(self.config)
        try:
            yield store
        finally:
            store.close()

    def backdate(self, session_id: str, seconds: int) -> None:
        """Move a session's expiry `seconds` into the past (time travel, instead of waiting 30 min)."""
        raise NotImplementedError

    def blob_exists(self, session_id: str) -> bool:
        raise NotImplementedError

    def traces(self, session_id: str) -> list[str]:
        """Every place that still holds something of the session (empty: nothing left)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class EmbeddedDeployment(Deployment):
    name = "embedded"
    direct_uploads = False

    def __init__(self, root: Path) -> None:
        self.server = start_embedded(
            data_dir=root, sweep_interval_s=SWEEP_S, rate_limit_per_hour=RATE_LIMIT, monthly_quota=QUOTA
        )
        self.base_url, self.api_key, self.config = (
            self.server.base_url,
            self.server.api_key,
            self.server.config,
        )
        self.data_dir = root

    def _sql(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.data_dir / DB_NAME, timeout=10)) as conn, conn:
            return conn.execute(sql, args).fetchall()

    def backdate(self, session_id: str, seconds: int) -> None:
        self._sql("UPDATE sessions SET expires_at = ? WHERE id = ?", int(time.time()) - seconds, session_id)

    def blob_exists(self, session_id: str) -> bool:
        return (self.data_dir / "uploads" / f"{session_id}.bin").exists()

    def traces(self, session_id: str) -> list[str]:
        found = [f"sqlite row {row}" for row in self._sql("SELECT id FROM sessions WHERE id = ?", session_id)]
        with contextlib.closing(sqlite3.connect(self.data_dir / DB_NAME)) as conn:
            if any(session_id in line for line in conn.iterdump()):
                found.append("sqlite dump")
        found += [f"file {p}" for p in self.data_dir.rglob("*") if session_id in p.name]
        return found

    def close(self) -> None:
        self.server.stop()


class ScaledDeployment(Deployment):
    name = "scaled"
    direct_uploads = True
    BUCKET = "vitalcam-contract"

    def __init__(self, root: Path, stack: contextlib.ExitStack) -> None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        self.root = root
        self.pg = stack.enter_context(services.postgres())
        self.redis = stack.enter_context(services.redis(root / "redis"))
        self.s3 = stack.enter_context(services.s3_server())
        self.control = root / "control"
        self.control.mkdir(parents=True, exist_ok=True)
        self.config = ServerConfig(
            data_dir=root / "data",
            database_url=self.pg.url,
            blob_store=self.s3.blob_store_url(self.BUCKET),
            queue_url=self.redis.url,
            rate_limit_per_hour=RATE_LIMIT,
            monthly_quota=QUOTA,
            single_process=False,
        )
        self.env = {
            **os.environ,
            "VITALCAM_DATABASE_URL": self.pg.url,
            "VITALCAM_BLOB_STORE": self.s3.blob_store_url(self.BUCKET),
            "VITALCAM_QUEUE_URL": self.redis.url,
            "VITALCAM_DATA_DIR": str(root / "data"),
            "VITALCAM_RATE_LIMIT_PER_HOUR": str(RATE_LIMIT),
            "VITALCAM_MONTHLY_QUOTA": str(QUOTA),
            "VITALCAM_SWEEP_INTERVAL_S": str(SWEEP_S),
            "PERSIST_VITALS": "false",
            CONTROL_ENV: str(self.control),
        }
        self.api_key = self.new_key("contract")
        self.port = services.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api = self._spawn(
            "api",
            [sys.executable, "-c", "from vitalcam.cli import main; raise SystemExit(main())",
             "serve", "--port", str(self.port), "--workers", "2"],
        )  # fmt: skip
        stack.callback(self._stop, self.api)
        self.workers: list[subprocess.Popen[bytes]] = []
        for _ in range(2):
            self.start_worker()
        stack.callback(lambda: [self._stop(w) for w in self.workers])
        self._wait_healthy()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}-{time.monotonic_ns()}.log").open("wb")
        return subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn(
            "worker", [sys.executable, "-m", "tests.fault_worker", "--job-timeout", str(JOB_TIMEOUT_S)]
        )
        self.workers.append(worker)
        return worker

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker (no clean-up runs); `start_worker` is the supervisor's replacement."""
        worker = next(w for w in self.workers if w.pid == pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        self.workers.remove(worker)

    def api_processes(self) -> list[int]:
        """The pids of the API processes `serve --workers 2` runs: its children, less multiprocessing's
        resource tracker."""
        return children_of(self.api.pid, "spawn_main")

    def _wait_healthy(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"vitalcam serve exited with {self.api.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                healthy = httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200
                if healthy and len(self.api_processes()) == 2:
                    return
            time.sleep(0.1)
        raise RuntimeError("the scaled deployment did not become healthy")

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def backdate(self, session_id: str, seconds: int) -> None:
        self.pg.psql(
            f"UPDATE sessions SET expires_at = {int(time.time()) - seconds} WHERE id = '{session_id}'"
        )

    def bucket_keys(self) -> list[str]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3.endpoint, region_name="us-east-1")
        with contextlib.closing(s3):
            return [o["Key"] for o in s3.list_objects_v2(Bucket=self.BUCKET).get("Contents", [])]

    def blob_exists(self, session_id: str) -> bool:
        return any(session_id in key for key in self.bucket_keys())

    def redis_keys(self) -> list[str]:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.redis.port), "--scan"], capture_output=True, text=True, check=True
        )
        return out.stdout.split()

    def traces(self, session_id: str) -> list[str]:
        found = []
        if self.pg.psql(f"SELECT count(*) FROM sessions WHERE id = '{session_id}'").strip() != "0":
            found.append("postgres row")
        found += [f"bucket {key}" for key in self.bucket_keys() if session_id in key]
        found += [f"redis {key}" for key in self.redis_keys() if session_id in key]
        found += [f"file {p}" for p in (self.root / "data").rglob("*") if session_id in p.name]
        return found

    def close(self) -> None:  # the ExitStack that built it stops everything
        pass


def children_of(pid: int, marker: str) -> list[int]:
    """Live child processes of `pid` whose command line contains `marker` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if int(fields[1]) == pid and fields[0] != "Z" and marker in cmdline:
                found.append(int(stat.parent.name))
    return sorted(found)


@contextlib.contextmanager
def deployment(name: str, root: Path) -> Iterator[Deployment]:
    with contextlib.ExitStack() as stack:
        if name == "embedded":
            built: Deployment = EmbeddedDeployment(root)
            stack.callback(built.close)
        elif name == "scaled":
            built = ScaledDeployment(root, stack)
        else:
            raise ValueError(name)
        yield built
