"""Opening a source from what a user types: a camera index or device, a stream URL or a video file.

It sits above the sources it chooses between, so that `capture.source` (the interface they all
implement) imports none of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from capture.camera import CameraSource
from capture.frame import SourceKind
from capture.source import FrameSource
from capture.video import VideoFileSource

STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
_DEVICE_RE = re.compile(r"^/dev/video\d+$")


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
    kind, target = classify_spec(spec)
    if kind == "video":
        if width is not None or height is not None or fps is not None:
            raise ValueError(
                "width/height/fps are camera requests; a video file plays at its own size and rate"
            )
        return VideoFileSource(str(target), start_s=start_s, duration_s=duration_s, realtime=realtime)
    if start_s:
        raise ValueError("start_s applies to video files only")
    return CameraSource(target, width=width, height=height, fps=fps, duration_s=duration_s, kind=kind)
