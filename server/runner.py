"""Running the app: `serve` (blocking, for `vitalcam serve`) and `start_embedded` (a background thread).

The embedded server is the real server on a real socket: `vitalcam measure` without `--api-url` and the
tests talk to it over HTTP exactly as they would to a deployed backend, so nothing is mocked.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from server.app import create_app
from server.config import ServerConfig
from server.keys import create_key, list_keys
from server.processing import InferFn

log = logging.getLogger("vitalcam.server")

_START_TIMEOUT_S = 15.0


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: Path | str | None = None,
    *,
    log_level: str = "info",
) -> None:
    """Run the reference backend until interrupted; configuration comes from the environment."""
    config = ServerConfig.from_env(data_dir=Path(data_dir) if data_dir is not None else None)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if not any(k.active for k in list_keys(config.data_dir)):
        log.warning(
            "no active API keys in %s; create one with: vitalcam keys create --developer NAME --data-dir %s",
            config.data_dir,
            config.data_dir,
        )
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level)


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
        api_key = create_key(config.data_dir, developer, live=False)
        app = create_app(config, infer=infer)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
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
