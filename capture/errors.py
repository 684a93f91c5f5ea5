"""Capture errors: one base class so callers can catch every capture failure, with a subclass per cause."""

from __future__ import annotations


class CaptureError(Exception):
    """Base class of every error raised by a frame source."""


class CameraNotFound(CaptureError):
    """No camera or stream could be opened; `tried` lists what was attempted, so the user can fix it."""

    def __init__(self, message: str, tried: list[str] | None = None) -> None:
        self.tried = list(tried or [])
        if self.tried:
            message = f"{message} (tried: {'; '.join(self.tried)})"
        super().__init__(message)


class VideoFileError(CaptureError):
    """A video file is missing, empty, not a video, corrupt or truncated; the message names the file."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class SourceLost(CaptureError):
    """A source stopped delivering mid-way (camera unplugged, stream dropped, file cut short).

    Frames already yielded are valid and stay usable: the error only marks where the stream ended.
    """

    def __init__(self, message: str, frames_delivered: int, last_t_s: float | None) -> None:
        self.frames_delivered = frames_delivered
        self.last_t_s = last_t_s
        super().__init__(message)
