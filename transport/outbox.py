"""The outbox: measurements that could not be submitted, kept on disk until a replay gets their result.

A person who sat still for 30 s must never lose the measurement to a dropped connection. Layout of the
directory (default `$XDG_CACHE_HOME/vitalcam/outbox`, else `~/.cache/vitalcam/outbox`):

    <id>.tensor          the payload exactly as it would have been uploaded
    <id>.json            sidecar: created time, API URL, demographics, attempts, last error
    results/<id>.json    the completed result of a replay, written before the payload is deleted

Every file is written to a temporary name in the same directory, fsynced and `os.replace`d into place, so
a crash leaves either the old file or the new one, never half of one. Payloads hold face patches and
results hold vitals, so directories are 0700 and files 0600: readable by the user only. The payload is written before its
sidecar and deleted after its result is saved; `pending()` lists every payload, even one whose sidecar a
crash prevented, so at any instant each measurement exists as a pending payload, a saved result, or both.
The API key is never written: it is a secret, and replay uses whatever client the caller passes.

This module only stores; replaying the items through a client is transport/replay.py's job.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transport.errors import VitalcamError
from transport.models import Demographics, Result

PAYLOAD_SUFFIX = ".tensor"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SIDECAR_SUFFIX = ".json"
RESULTS_DIR = "results"


def default_outbox_dir() -> Path:
    """`$XDG_CACHE_HOME/vitalcam/outbox`, or `~/.cache/vitalcam/outbox` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "vitalcam" / "outbox"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One pending measurement: its payload file and what the sidecar says about it."""

    id: str
    payload_path: Path
    sidecar_path: Path
    created_at: float
    api_url: str | None = None
    demographics: Demographics | None = None
    attempts: int = 0
    last_error: dict[str, Any] | None = None


def error_summary(error: BaseException | None) -> dict[str, Any] | None:
    """What the sidecar keeps of an error: enough to tell the user why it is pending, no payload data."""
    if error is None:
        return None
    summary: dict[str, Any] = {"type": type(error).__name__, "message": str(error), "at": time.time()}
    if isinstance(error, VitalcamError):
        summary.update(
            code=error.code, status=error.status, request_id=error.request_id, message=error.message
        )
    return summary


class Outbox:
    """A directory of pending measurements (see the module docstring for the layout and guarantees)."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_outbox_dir()

    @property
    def results_dir(self) -> Path:
        return self.directory / RESULTS_DIR

    def __repr__(self) -> str:
        return f"Outbox({str(self.directory)!r})"

    def save(
        self,
        payload: bytes | bytearray | memoryview | Path | str,
        api_url: str | None = None,
        demographics: Demographics | None = None,
        error: BaseException | None = None,
    ) -> OutboxItem:
        """Store a payload (bytes or a file to copy) with its sidecar; returns the new pending item."""
        _private_dir(self.directory)
        item_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:12]
        payload_path = self.directory / f"{item_id}{PAYLOAD_SUFFIX}"
        data = Path(payload).read_bytes() if isinstance(payload, str | Path) else bytes(payload)
        _atomic_write(payload_path, data)
        item = OutboxItem(
            id=item_id,
            payload_path=payload_path,
            sidecar_path=self.directory / f"{item_id}{SIDECAR_SUFFIX}",
            created_at=time.time(),
            api_url=api_url,
            demographics=demographics,
            attempts=1 if error is not None else 0,
            last_error=error_summary(error),
        )
        self._write_sidecar(item)
        return item

    def pending(self) -> list[OutboxItem]:
        """Every stored payload, oldest first, including any whose sidecar is missing or unreadable."""
        if not self.directory.is_dir():
            return []
        items = [
            self._load(p) for p in self.directory.glob(f"*{PAYLOAD_SUFFIX}") if not p.name.startswith(".")
        ]
        return sorted(items, key=lambda i: (i.created_at, i.id))

    def record_failure(self, item: OutboxItem, error: BaseException) -> OutboxItem:
        """Count a failed replay and remember why, keeping the payload for the next one."""
        updated = replace(item, attempts=item.attempts + 1, last_error=error_summary(error))
        self._write_sidecar(updated)
        return updated

    def result_path(self, item: OutboxItem) -> Path:
        return self.results_dir / f"{item.id}.json"

    def save_result(self, item: OutboxItem, result: Result) -> Path:
        """Write the replay's result durably; only after this may the payload go."""
        _private_dir(self.directory)
        _private_dir(self.results_dir)
        path = self.result_path(item)
        record = {
            "item_id": item.id,
            "measured_at": item.created_at,
            "api_url": item.api_url,
            "demographics": item.demographics.to_json() if item.demographics else None,
            "saved_at": time.time(),
            "result": result.raw,
        }
        _atomic_write(path, json.dumps(record, indent=2).encode())
        return path

    def load_result(self, item: OutboxItem) -> Result | None:
        """The saved result of an item, or None when none was saved (or it cannot be read back)."""
        try:
            record = json.loads(self.result_path(item).read_bytes())
            return Result.from_json(record["result"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remove(self, item: OutboxItem) -> None:
        """Delete a replayed item: payload first, so a crash in between leaves only a harmless sidecar."""
        item.payload_path.unlink(missing_ok=True)
        item.sidecar_path.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def _write_sidecar(self, item: OutboxItem) -> None:
        sidecar = {
            "id": item.id,
            "created_at": item.created_at,
            "api_url": item.api_url,
            "demographics": item.demographics.to_json() if item.demographics else None,
            "attempts": item.attempts,
            "last_error": item.last_error,
            "payload": item.payload_path.name,
        }
        _atomic_write(item.sidecar_path, json.dumps(sidecar, indent=2).encode())

    def _load(self, payload_path: Path) -> OutboxItem:
        item_id = payload_path.name[: -len(PAYLOAD_SUFFIX)]
        sidecar_path = self.directory / f"{item_id}{SIDECAR_SUFFIX}"
        data: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(sidecar_path.read_bytes())
            data = loaded if isinstance(loaded, dict) else {}
        try:
            demographics = Demographics.from_json(data.get("demographics"))
        except (ValueError, TypeError, AttributeError):
            demographics = None
        created = data.get("created_at")
        if not isinstance(created, int | float):
            try:
                created = payload_path.stat().st_mtime
            except OSError:
                created = 0.0
        attempts = data.get("attempts")
        last_error = data.get("last_error")
        return OutboxItem(
            id=item_id,
            payload_path=payload_path,
            sidecar_path=sidecar_path,
            created_at=float(created),
            api_url=data.get("api_url") if isinstance(data.get("api_url"), str) else None,
            demographics=demographics,
            attempts=attempts if isinstance(attempts, int) else 0,
            last_error=last_error if isinstance(last_error, dict) else None,
        )


def _private_dir(directory: Path) -> None:
    """Create `directory` readable by the user only, and tighten it if an older version left it 0755."""
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    with contextlib.suppress(OSError):  # not ours to change (a shared mount): the files are still 0600
        if directory.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
            directory.chmod(PRIVATE_DIR_MODE)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # Created 0600 from the start, so no other user can open it between creation and a chmod.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)  # os.replace: atomic on POSIX and Windows
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make renames and unlinks durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["Outbox", "OutboxItem", "default_outbox_dir", "error_summary"]
