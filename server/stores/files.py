"""The filesystem `BlobStore`: uploads in `data_dir/uploads/`, streamed through the API.

A PUT is written to `<id>.part` and renamed to `<id>.bin` only once complete and validated, so a reader
never sees half an upload and a crash leaves only `.part` files, which the next start removes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from server.stores.base import checked_session_id

UPLOADS_DIR: Final = "uploads"


class FileBlobWriter:
    def __init__(self, part: Path, final: Path) -> None:
        self._part = part
        self._final = final
        self._file: BinaryIO | None = part.open("wb")

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise ValueError("upload already finished")
        self._file.write(chunk)

    def commit(self) -> None:
        self._close()
        self._part.replace(self._final)

    def discard(self) -> None:
        self._close()
        self._part.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileBlobStore:
    """Tensors as files; `presigned_put_url` is None because the API receives the PUT itself."""

    direct_uploads = False

    def __init__(self, data_dir: Path) -> None:
        self.uploads_dir = Path(data_dir) / UPLOADS_DIR
        self.uploads_dir.mkdir(parents=True, exist_ok=True)

    def path(self, session_id: str, suffix: str = ".bin") -> Path:
        return self.uploads_dir / f"{checked_session_id(session_id)}{suffix}"

    def presigned_put_url(self, session_id: str, expires_at: int, max_bytes: int) -> str | None:
        return None

    @contextlib.contextmanager
    def writer(self, session_id: str) -> Iterator[FileBlobWriter]:
        """A writer whose upload is discarded unless `commit()` was called before the block ends."""
        writer = FileBlobWriter(self.path(session_id, ".part"), self.path(session_id))
        try:
            yield writer
        finally:
            writer.discard()  # after a commit the part file is already gone: a no-op

    def read(self, session_id: str, max_bytes: int) -> bytes | None:
        path = self.path(session_id)
        try:
            with path.open("rb") as f:
                data = f.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        if len(data) > max_bytes:
            raise ValueError(f"stored upload exceeds the {max_bytes}-byte limit")
        return data

    def delete(self, session_id: str) -> None:
        self.path(session_id).unlink(missing_ok=True)
        self.path(session_id, ".part").unlink(missing_ok=True)

    def discard_partials(self) -> None:
        for part in self.uploads_dir.glob("*.part"):
            part.unlink(missing_ok=True)

    def close(self) -> None:
        pass
