"""The frame-source interface shared by the camera, stream and video-file sources, and `open_source`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from capture.frame import Frame, SourceKind

STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
_DEVICE_RE = re.compile(r"^/dev/video\d+$")


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a source delivers: frame size after rotation, nominal fps and where the frames come from.

    `fps` is nominal (container rate or what the camera reports; 0.0 when unknown). Timing downstream must
    use `Frame.t_s`, never index/fps. `requested` holds the camera width/height/fps the caller asked for
    (None values when not asked) so that a mismatch with what was delivered is visible; None for files.

    `duration_s` and `frame_count` say how much a replay will deliver (of the requested segment), so that
    a replay can report progress in percent; both are what the container header states, hence estimates
    (a damaged file may end early). None when unknown, and always for cameras and streams.
    `frame_count` is only set when the header counts the frames of exactly what is replayed.
    `bit_rate_bps` is the compressed video stream's bit rate from the container (None when unknown, and
    for cameras, whose frames arrive uncompressed or as MJPG we do not see).
    """

    width: int
    height: int
    fps: float
    kind: SourceKind
    name: str
    requested: dict[str, Any] | None = None
    duration_s: float | None = None
    frame_count: int | None = None
    bit_rate_bps: float | None = None

    @property
    def bits_per_pixel(self) -> float | None:
        """Compressed bits per pixel per frame: how hard the video was squeezed (None when unknown)."""
        if not self.bit_rate_bps or not self.fps or self.width <= 0 or self.height <= 0:
            return None
        return self.bit_rate_bps / (self.width * self.height * self.fps)


@runtime_checkable
class FrameSource(Protocol):
    """Anything that yields `Frame`s with true timestamps; close it (or use `with`) to free the device."""

    @property
    def info(self) -> SourceInfo: ...

    @property
    def dropped(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def classify_spec(spec: int | str | Path) -> tuple[SourceKind, int | str]:
    """Decide which source a spec means: a camera index/device, a stream URL or a video file path.

    A string of digits ("0") is taken as a camera index, as a CLI would pass it.
    """
    if isinstance(spec, bool):
        raise TypeError("source spec must be an int, str or Path, not bool")
    if isinstance(spec, int):
        return "camera", spec
    if isinstance(spec, Path):
        return "video", str(spec)
    text = str(spec).strip()
    if text.isdigit():
        return "camera", int(text)
    if _DEVICE_RE.match(text):
        return "camera", text
    if text.lower().startswith(STREAM_PREFIXES):
        return "stream", text
    return "video", text


def open_source(
    spec: int | str | Path,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
    realtime: bool = False,
) -> FrameSource:
    """Open a camera (int or /dev/videoN), a network stream (rtsp/http URL) or a video file (any other path).

    width/height/fps are requests to a camera or stream; start_s/realtime apply to files only; duration_s
    limits any source. Options that do not apply raise ValueError rather than being silently ignored.
    """
    from capture.camera import CameraSource
    from capture.video import VideoFileSource

    kind, target = classify_spec(spec)
    if kind == "video":
        if width is not None or height is not None or fps is not None:
            raise ValueError(
                "width/height/fps are camera requests; a video file plays at its own size and rate"
            )
        return VideoFileSource(target, start_s=start_s, duration_s=duration_s, realtime=realtime)
    if start_s:
        raise ValueError("start_s applies to video files only")
    return CameraSource(target, width=width, height=height, fps=fps, duration_s=duration_s, kind=kind)
