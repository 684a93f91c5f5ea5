"""Where inference runs: in this process (the embedded default) or on queue workers (server/queue.py).

The session service hands a claimed session (status `processing`, its tensor in the blob store) to an
`InferenceRunner` and gets the upload-complete body back; it does not know where the work happened.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from server.processing import InferFn, Outcome, process_upload
from server.stores.base import BlobStore, SessionRow


class InferenceRunner(Protocol):
    # True when the runner stores the outcome in the session row itself (a worker in another process).
    stores_outcome: bool

    async def run(self, session: SessionRow, max_bytes: int) -> Outcome: ...

    async def wait_elsewhere(self, session_id: str) -> Outcome | None:
        """The outcome of a session another process is running, or None when this runner cannot tell."""
        ...

    async def close(self) -> None: ...


class MissingTensor(Exception):
    """The blob store has no tensor for a session whose upload was recorded (e.g. deleted by expiry)."""


class InProcessRunner:
    """Inference on a dedicated thread pool, so a slow engine cannot starve request handling of threads."""

    stores_outcome = False

    def __init__(self, blobs: BlobStore, infer: InferFn, threads: int) -> None:
        self._blobs = blobs
        self._infer = infer
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="vitalcam-infer")

    async def run(self, session: SessionRow, max_bytes: int) -> Outcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, session, max_bytes)

    def _run(self, session: SessionRow, max_bytes: int) -> Outcome:
        payload = self._blobs.read(session.id, max_bytes)
        if payload is None:
            raise MissingTensor(session.id)
        return process_upload(session.id, payload, session.demographics, session.fallback_config, self._infer)

    async def wait_elsewhere(self, session_id: str) -> Outcome | None:
        return None

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
